"""Run one Bytewax worker process without touching `sys.path`.

``python -P -m streamml.worker MODULE:ATTR [bytewax.run options]`` takes the same options as
``python -m bytewax.run``, but imports the dataflow from the installed packages only: unlike
``bytewax.run`` it does not put the current directory first on `sys.path`, so folders of the
working directory (a state dir named ``state``, say) can never shadow a module. The CLI starts
every worker this way.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from datetime import timedelta

from streamml.state.errors import RefusedError

__all__ = ["REFUSED_EXIT", "main"]

REFUSED_EXIT = 3
"""Exit code of a worker whose run was refused (`RefusedError`) before it wrote anything."""


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``bytewax.run`` options from `argv`, import the dataflow and run this worker."""
    from bytewax import run as bytewax_run
    from bytewax.recovery import RecoveryConfig

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    kwargs = vars(bytewax_run._parse_args())
    snapshot_interval = kwargs.pop("snapshot_interval")
    recovery_directory = kwargs.pop("recovery_directory")
    backup_interval = kwargs.pop("backup_interval")
    kwargs["recovery_config"] = None
    if recovery_directory is not None:
        kwargs["epoch_interval"] = snapshot_interval
        kwargs["recovery_config"] = RecoveryConfig(recovery_directory, backup_interval)
    else:
        kwargs["epoch_interval"] = snapshot_interval or timedelta(seconds=10)
    addresses = kwargs.pop("addresses")
    if addresses is not None:
        kwargs["addresses"] = addresses.split(";")
    # Partition routing (`streamml.operators.routing`) keys shards by this worker's index.
    per_process = kwargs.get("workers_per_process") or 1
    processes = len(kwargs["addresses"]) if addresses is not None else 1
    os.environ["STREAMML_PROCESS_ID"] = str((kwargs.get("process_id") or 0) * per_process)
    os.environ["STREAMML_PROCESSES"] = str(processes * per_process)
    module, _, attr = kwargs.pop("import_str").partition(":")
    try:
        kwargs["flow"] = bytewax_run._locate_dataflow(module, attr or "flow")
        bytewax_run.cli_main(**kwargs)
    except Exception as exc:
        refused = _refusal(exc)
        if refused is None:
            raise
        print(f"streamml: refused: {refused}", file=sys.stderr, flush=True)
        sys.exit(REFUSED_EXIT)


def _refusal(exc: BaseException | None) -> RefusedError | None:
    """Return the `RefusedError` behind `exc` (Bytewax wraps errors of sources and sinks)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, RefusedError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


if __name__ == "__main__":
    main()
