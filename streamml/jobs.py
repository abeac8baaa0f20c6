"""Run the flows of `streamml run` in worker processes, as the CLI, the demo and benchmarks do."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from streamml.console import Progress

if TYPE_CHECKING:
    from pathlib import Path

    from streamml.cluster import ClusterMember
    from streamml.dataflows.error_count import ErrorCountConfig
    from streamml.dataflows.features import FeaturesConfig
    from streamml.runner import RunResult

__all__ = ["run_error_count", "run_features"]


def _run(
    flow: str,
    env: dict[str, str],
    prepare: Callable[[], None],
    *,
    processes: int,
    stats_path: Path | None,
    show_progress: bool | None,
    recovery_dir: Path | None,
    snapshot_interval_s: int,
    member: ClusterMember | None,
) -> RunResult:
    from streamml.recovery import ensure_recovery_dir, recovery_args
    from streamml.runner import event_progress, run_flow_processes

    extra: list[str] = []
    if recovery_dir is not None:
        ensure_recovery_dir(recovery_dir)
        extra = recovery_args(recovery_dir, snapshot_interval_s)
    prepare()
    bar = Progress(enabled=show_progress)
    try:
        return run_flow_processes(
            flow,
            env,
            processes=processes,
            stats_path=stats_path,
            progress=event_progress(bar),
            extra_args=extra,
            member=member,
        )
    finally:
        bar.done()


def run_error_count(
    config: ErrorCountConfig,
    *,
    processes: int = 1,
    show_progress: bool | None = None,
    recovery_dir: Path | None = None,
    snapshot_interval_s: int = 10,
    reset_sources: tuple[str, ...] = (),
    member: ClusterMember | None = None,
) -> RunResult:
    """Run the error-count flow in worker processes; shows progress on a terminal.

    With `member`, runs this host's process of a cluster over several hosts. Raises
    `RefusedError` when the state dir, recovery dir and inputs disagree (nothing is written
    then).
    """
    from streamml.dataflows.error_count import prepare_state

    return _run(
        "streamml.dataflows.error_count:flow",
        config.to_env(),
        lambda: prepare_state(config, reset_sources=reset_sources),
        processes=processes,
        stats_path=config.stats_path,
        show_progress=show_progress,
        recovery_dir=recovery_dir,
        snapshot_interval_s=snapshot_interval_s,
        member=member,
    )


def run_features(
    config: FeaturesConfig,
    *,
    processes: int = 1,
    show_progress: bool | None = None,
    snapshot_interval_s: int = 10,
    reset_sources: tuple[str, ...] = (),
    member: ClusterMember | None = None,
) -> RunResult:
    """Run the features flow in worker processes; shows progress on a terminal.

    With `member`, runs this host's process of a cluster over several hosts. Raises
    `RefusedError` when the state dir, recovery dir, definitions and inputs disagree (nothing is
    applied then).
    """
    from streamml.dataflows.features import prepare_features_state

    return _run(
        "streamml.dataflows.features:flow",
        config.to_env(),
        lambda: prepare_features_state(config, reset_sources=reset_sources),
        processes=processes,
        stats_path=config.stats_path,
        show_progress=show_progress,
        recovery_dir=config.recovery_dir,
        snapshot_interval_s=snapshot_interval_s,
        member=member,
    )
