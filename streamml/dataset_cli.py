"""`streamml dataset build`: point-in-time correct training sets from the history store."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add `streamml dataset`."""
    p = sub.add_parser(
        "dataset", help="training sets from the history store", description="Build training sets."
    )
    dsub = p.add_subparsers(dest="dataset_command", metavar="COMMAND", required=True)
    b = dsub.add_parser(
        "build",
        help="each spine row's features as of its time (point-in-time correct)",
        description=(
            "For each row of the spine (an entity, a time in epoch ms, and any other columns "
            "such as a label), add each feature's value as an online read at that time would "
            "have given it: the aggregation over the window ending then of the accepted events "
            "up to then, recomputed from the history store; null when nothing falls in the "
            "window or the latest event is older than the feature's TTL. Feature versions go "
            "into the output's metadata."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    b.add_argument("--spine", required=True, type=Path, help="Parquet or CSV file of spine rows")
    b.add_argument("--features", required=True, help="comma-separated feature names")
    b.add_argument("--history", required=True, type=Path, help="history store root")
    where = b.add_mutually_exclusive_group()
    where.add_argument(
        "--state-dir", type=Path, help="take the definitions from this state dir (its versions)"
    )
    where.add_argument("--definitions", type=Path, help="definition file (default: bundled)")
    b.add_argument("--entity-column", default="account", help="the spine's entity column")
    b.add_argument("--time-column", default="ts", help="the spine's time column (epoch ms)")
    b.add_argument("--out", required=True, type=Path, help="output Parquet file")
    b.set_defaults(func=_cmd_build)


def _cmd_build(args: argparse.Namespace) -> int:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from streamml.state.definitions import DefinitionError, default_definitions, load_definitions
    from streamml.state.feature_manifest import read_sources
    from streamml.state.training_sets import build_training_set

    names = [n.strip() for n in args.features.split(",") if n.strip()]
    try:
        if args.state_dir is not None:
            known = {f.name: f for s in read_sources(args.state_dir).values() for f in s.features}
        else:
            defs = load_definitions(args.definitions) if args.definitions else default_definitions()
            known = dict(defs.features)
    except DefinitionError as exc:
        print(f"streamml dataset build: {exc}", file=sys.stderr)
        return 2
    missing = [n for n in names if n not in known]
    if missing or not names:
        print(
            f"streamml dataset build: unknown features {missing or '(none given)'} "
            f"(known: {', '.join(known) or 'none'})",
            file=sys.stderr,
        )
        return 2
    if not args.spine.is_file():
        print(f"streamml dataset build: spine file not found: {args.spine}", file=sys.stderr)
        return 2
    spine = (
        pacsv.read_csv(args.spine)
        if args.spine.suffix.lower() == ".csv"
        else pq.read_table(args.spine)
    )
    started = time.perf_counter()
    try:
        table = build_training_set(
            spine,
            [known[n] for n in names],
            args.history,
            entity=args.entity_column,
            time=args.time_column,
        )
    except ValueError as exc:
        print(f"streamml dataset build: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, args.out)
    took = time.perf_counter() - started
    filled = {n: table.num_rows - table.column(n).null_count for n in names}
    print(f"{args.out}: {table.num_rows:,} rows x {len(names)} features in {took:.1f} s")
    for n in names:
        print(f"  {n:<28} {filled[n]:>12,} values  {table.num_rows - filled[n]:>12,} missing")
    return 0
