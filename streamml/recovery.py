"""Bytewax recovery directories: create them when missing and build the run options."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["DEFAULT_PARTITIONS", "ensure_recovery_dir", "recovery_args", "register"]

DEFAULT_PARTITIONS = 4


def ensure_recovery_dir(path: str | os.PathLike[str], partitions: int = DEFAULT_PARTITIONS) -> bool:
    """Create and initialise a recovery directory unless it already holds partitions.

    Returns True when it was created. The partition count is fixed once created; it need not match
    the number of worker processes.
    """
    from bytewax.recovery import init_db_dir

    root = Path(path)
    if any(root.glob("part-*.sqlite3")):
        return False
    if partitions < 1:
        raise ValueError(f"recovery partitions must be >= 1, got {partitions}")
    root.mkdir(parents=True, exist_ok=True)
    init_db_dir(root, partitions)
    return True


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


def _cmd_init(args: argparse.Namespace) -> int:
    try:
        created = ensure_recovery_dir(args.dir, args.partitions)
    except ValueError as exc:
        print(f"streamml recovery init: {exc}", file=sys.stderr)
        return 2
    print(f"{'created' if created else 'already initialised'}: {args.dir}")
    return 0
