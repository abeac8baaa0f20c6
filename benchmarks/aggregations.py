"""Aggregation kernel: one count vs the five speed-test features of one source, per batch.

Times `advance_features` (the vectorised pass that updates every feature of a source in one state
record per entity) on the same batches for the bundled `signal_errors_24h` count and for the five
bundled speed-test features, next to the rolling count's own kernel (`rolling.advance`). Kernel
only: no decoding, RocksDB or Bytewax; each batch's records start empty, so this is the work of
the first batch of fresh entities. Reports medians with min and max over the repeats, and checks
the one-feature kernel against the rolling count inside the timed loop's first repeat.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np
import orjson
from streamml.operators.aggregations import advance_features
from streamml.operators.rolling import advance
from streamml.state.definitions import default_definitions
from streamml.state.feature_records import RecordLayout
from streamml.state.rolling_store import empty_records

__all__ = ["register", "run_aggregations"]

_FIELDS = ("download_ratio", "upload_ratio", "latency_ms", "packet_loss_pct")


def run_aggregations(
    *, events: int, accounts: int, repeats: int, seed: int = 1, hours: int = 6
) -> dict[str, dict[str, float]]:
    """Time each kernel on `repeats` batches of `events` events; events/s median, min, max."""
    defs = default_definitions()
    one = RecordLayout((defs.feature("signal_errors_24h"),))
    five = RecordLayout(defs.of_source("speed_tests"))
    rng = np.random.default_rng(seed)
    start = 1_767_225_600_000
    timings: dict[str, list[float]] = {"rolling.advance": [], "1 feature": [], "5 features": []}
    for rep in range(repeats):
        raw = rng.integers(0, accounts, events)
        uniq, codes = np.unique(raw, return_inverse=True)
        ts = start + np.sort(rng.integers(0, hours * 3_600_000, events))
        fields = {k: rng.random(events) * 100 for k in _FIELDS}
        order = np.argsort(codes, kind="stable")
        ng = len(uniq)
        t0 = time.perf_counter()
        old = advance(
            empty_records(ng, 24),
            codes,
            ts // 3_600_000,
            ts,
            window=24,
            threshold=2000,
            order=order,
        )
        t1 = time.perf_counter()
        new = advance_features(one, one.empty(ng), codes, ts, fields, order=order)
        t2 = time.perf_counter()
        advance_features(five, five.empty(ng), codes, ts, fields, order=order)
        t3 = time.perf_counter()
        if rep == 0 and new.records.tobytes() != old.records.tobytes():
            raise AssertionError("the one-feature kernel disagrees with the rolling count")
        timings["rolling.advance"].append(t1 - t0)
        timings["1 feature"].append(t2 - t1)
        timings["5 features"].append(t3 - t2)
    return {
        name: {
            "median": events / float(np.median(v)),
            "min": events / max(v),
            "max": events / min(v),
        }
        for name, v in timings.items()
    }


def _cmd(args: argparse.Namespace) -> int:
    figures = run_aggregations(events=args.events, accounts=args.accounts, repeats=args.repeats)
    if args.json:
        print(orjson.dumps(figures).decode())
        return 0
    base = figures["1 feature"]["median"]
    for name, f in figures.items():
        print(
            f"{name:<16} {f['median'] / 1e6:6.2f}M events/s  (min {f['min'] / 1e6:.2f}, "
            f"max {f['max'] / 1e6:.2f})  {f['median'] / base:5.0%} of 1 feature"
        )
    return 0


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", type=int, default=200_000, help="events per batch")
    p.add_argument("--accounts", type=int, default=100_000, help="distinct accounts drawn")
    p.add_argument("--repeats", type=int, default=7, help="batches timed per kernel")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=_cmd)


def register(bench_sub: argparse._SubParsersAction) -> None:
    """Add `aggregations` to the `streamml bench` subcommands."""
    p = bench_sub.add_parser(
        "aggregations",
        help="aggregation kernel: one count vs five speed-test features in one pass",
        description=(__doc__ or "").split("\n\n")[0],
    )
    _add_arguments(p)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from `python -m streamml.benchmarks.aggregations`."""
    parser = argparse.ArgumentParser(prog="python -m streamml.benchmarks.aggregations")
    _add_arguments(parser)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
