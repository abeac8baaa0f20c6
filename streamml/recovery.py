"""Bytewax recovery directories: create, check and reset them, and build the run options."""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import sys
from pathlib import Path

from streamml.operators.recovery_state import BINDING_FILE, ROUTING_FILE, bind_recovery_dir
from streamml.state.errors import RefusedError
from streamml.state.layout import StateLayout

__all__ = [
    "DEFAULT_PARTITIONS",
    "ensure_recovery_dir",
    "recovery_args",
    "register",
    "reset_recovery_dir",
]

DEFAULT_PARTITIONS = 4


def _initialised(root: Path) -> bool:
    """Whether every partition Bytewax created is there (an init killed midway is not)."""
    parts = sorted(root.glob("part-*.sqlite3"))
    if not parts:
        return False
    try:
        with sqlite3.connect(f"file:{parts[0]}?mode=ro", uri=True) as db:
            row = db.execute("SELECT part_count FROM parts").fetchone()
    except sqlite3.Error:
        return False
    return row is not None and row[0] == len(parts)


def ensure_recovery_dir(path: str | os.PathLike[str], partitions: int = DEFAULT_PARTITIONS) -> bool:
    """Create and initialise a recovery directory unless it already holds its partitions.

    Returns True when it was created. The partition count is fixed once created; it need not match
    the number of worker processes. Partitions are created in a temporary folder and moved in
    after, so a kill during creation leaves a directory that the next call creates again.
    """
    from bytewax.recovery import init_db_dir

    root = Path(path)
    if _initialised(root):
        return False
    if partitions < 1:
        raise ValueError(f"recovery partitions must be >= 1, got {partitions}")
    if (root / BINDING_FILE).exists():
        raise RefusedError(
            f"recovery dir {root} is bound to a state dir but its Bytewax partitions are "
            f"incomplete; start it over with `streamml recovery reset {root} --state-dir DIR`"
        )
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / ".init-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    init_db_dir(tmp, partitions)
    for stale in root.glob("part-*.sqlite3"):
        stale.unlink()
    for part in sorted(tmp.glob("part-*.sqlite3")):
        os.replace(part, root / part.name)
    shutil.rmtree(tmp, ignore_errors=True)
    return True


def reset_recovery_dir(
    path: str | os.PathLike[str],
    state_dir: str | os.PathLike[str],
    partitions: int = DEFAULT_PARTITIONS,
) -> None:
    """Start a recovery dir over for `state_dir`: its snapshots and marks are dropped.

    The next run reads each input from where the state dir has applied it, and appends to the
    outputs as they are.
    """
    root = Path(path)
    if StateLayout.read(state_dir) is None:
        raise RefusedError(f"{state_dir} holds no state; run the flow once to create it")
    for item in [*root.glob("part-*.sqlite3"), root / BINDING_FILE, root / ROUTING_FILE]:
        item.unlink(missing_ok=True)
    shutil.rmtree(root / "streamml-outputs", ignore_errors=True)
    ensure_recovery_dir(root, partitions)
    bind_recovery_dir(root, state_dir, fresh_state=True)


def recovery_args(path: str | os.PathLike[str], snapshot_interval_s: int) -> list[str]:
    """Return the `python -m bytewax.run` options that enable recovery (whole seconds)."""
    if int(snapshot_interval_s) != snapshot_interval_s or snapshot_interval_s < 1:
        raise ValueError(
            f"the snapshot interval is a whole number of seconds >= 1, got {snapshot_interval_s}"
        )
    return ["-r", str(path), "-s", str(int(snapshot_interval_s)), "-b", "0"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add `streamml recovery`."""
    p = sub.add_parser(
        "recovery",
        help="manage Bytewax recovery directories",
        description="Manage the recovery directories used by `streamml run ... --recovery-dir`.",
    )
    rsub = p.add_subparsers(dest="recovery_command", metavar="COMMAND", required=True)
    init = rsub.add_parser(
        "init",
        help="create a recovery directory",
        description=(
            "Create DIR and its recovery partitions (SQLite files holding snapshots of source "
            "positions and operator state). `streamml run --recovery-dir` does this by itself "
            "when DIR holds no partitions yet."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    init.add_argument("dir", type=Path)
    init.add_argument("--partitions", type=int, default=DEFAULT_PARTITIONS)
    init.set_defaults(func=_cmd_init)
    reset = rsub.add_parser(
        "reset",
        help="start a recovery directory over for a state dir",
        description=(
            "Drop DIR's snapshots and output marks and tie it to --state-dir. The next run with "
            "both reads each input from where the state dir has applied it and appends to the "
            "outputs as they are. Use it when a run was refused because the recovery dir and "
            "the state dir do not belong together."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    reset.add_argument("dir", type=Path)
    reset.add_argument("--state-dir", type=Path, required=True)
    reset.add_argument("--partitions", type=int, default=DEFAULT_PARTITIONS)
    reset.set_defaults(func=_cmd_reset)


def _cmd_reset(args: argparse.Namespace) -> int:
    try:
        reset_recovery_dir(args.dir, args.state_dir, args.partitions)
    except (ValueError, RefusedError) as exc:
        print(f"streamml recovery reset: {exc}", file=sys.stderr)
        return 2
    print(f"reset: {args.dir} now belongs to state dir {args.state_dir}")
    return 0


def _cmd_init(args: argparse.Namespace) -> int:
    try:
        created = ensure_recovery_dir(args.dir, args.partitions)
    except ValueError as exc:
        print(f"streamml recovery init: {exc}", file=sys.stderr)
        return 2
    print(f"{'created' if created else 'already initialised'}: {args.dir}")
    return 0
