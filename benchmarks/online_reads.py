"""Online reads: `OnlineStore.get_features` for 1 and 100 entities x 10 features, in process.

A state dir is filled with one speed-test source of 10 features (the bundled five, plus five more
over the same fields) for `--accounts` accounts, computed by the aggregation kernel from generated
speed tests and written to RocksDB as the flow writes them. Then `get_features` reads random
accounts as of the latest event time: each figure is the per-call latency over `--calls` calls
after a warm-up, p50 and p99, repeated `--repeats` times (median, min and max of each). Every read
is checked against `read_features` on the same records once before timing.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import orjson
from streamml.operators.aggregations import advance_features
from streamml.operators.sources import GeneratorConfig, generate_speed_tests
from streamml.state.definitions import default_definitions_path, parse_definitions
from streamml.state.feature_manifest import register_sources
from streamml.state.feature_records import RecordLayout
from streamml.state.layout import StateLayout
from streamml.state.online import OnlineStore
from streamml.state.rolling_store import RollingStateStore
from streamml.state.sharding import shard_many

__all__ = ["register", "run_online_reads"]

_EXTRA = (
    ("mean", "upload_ratio"),
    ("max", "download_ratio"),
    ("min", "latency_ms"),
    ("sum", "packet_loss_pct"),
    ("last", "latency_ms"),
)


def _definitions():
    text = default_definitions_path().read_text()
    for i, (agg, field) in enumerate(_EXTRA):
        text += (
            f'\n[features.extra_{i}_{agg}]\nsource = "speed_tests"\naggregation = "{agg}"\n'
            f'field = "{field}"\nbucket = "1h"\nwindow = "24h"\nttl = "1h"\n'
        )
    return parse_definitions(text).of_source("speed_tests")


def _fill(state_dir: Path, accounts: int, events: int) -> tuple[list[bytes], int]:
    features = _definitions()
    layout = StateLayout(shards=16)
    layout.ensure(state_dir)
    stored = register_sources(state_dir, {"speed_tests": features})["speed_tests"]
    record = RecordLayout(features)
    gen = GeneratorConfig(events=events, accounts=accounts, seed=1, start_ms=1_767_225_600_000)
    keys, ts, fields = generate_speed_tests(gen)
    encoded = keys.dictionary_encode()
    uniq = encoded.dictionary
    adv = advance_features(record, record.empty(len(uniq)), encoded.indices.to_numpy(), ts, fields)
    shard = shard_many(uniq, layout.shards, layout.shard_hash)
    names = uniq.to_pylist()
    for s in range(layout.shards):
        idx = np.flatnonzero(shard == s)
        store = RollingStateStore(
            StateLayout.shard_dir(state_dir, s),
            feature=stored.id,
            window=1,
            template=record.empty(1),
        )
        store.commit([names[i] for i in idx], adv.records[idx], {})
        store.close()
    return names, int(ts.max())


def run_online_reads(
    *, accounts: int = 100_000, events: int = 1_000_000, calls: int = 3000, repeats: int = 5
) -> dict[str, dict[str, float]]:
    """Return per-call latency figures (µs) of 1 x 10 and 100 x 10 reads."""
    tmp = Path(tempfile.mkdtemp(prefix="streamml-bench-reads-"))
    try:
        names, as_of = _fill(tmp, accounts, events)
        store = OnlineStore(tmp)
        features = list(store.feature_names)
        rng = np.random.default_rng(0)
        check = [names[i] for i in rng.integers(0, len(names), 100)]
        for n in (1, 100):
            got = store.get_features(check[:n], features, as_of)
            full = store.get_features(check[:n] + check[:9], features, as_of)[:n]
            if [{k: v.value for k, v in r.items()} for r in got] != [
                {k: v.value for k, v in r.items()} for r in full
            ]:
                raise AssertionError("scalar and vectorised reads disagree")
        out: dict[str, dict[str, float]] = {}
        for n in (1, 100):
            p50s, p99s = [], []
            for _ in range(repeats):
                picks = rng.integers(0, len(names), (calls, n))
                lat = np.empty(calls)
                for c in range(calls):
                    entities = [names[i] for i in picks[c]]
                    t0 = time.perf_counter_ns()
                    store.get_features(entities, features, as_of)
                    lat[c] = time.perf_counter_ns() - t0
                lat = lat[calls // 10 :] / 1000
                p50s.append(float(np.percentile(lat, 50)))
                p99s.append(float(np.percentile(lat, 99)))
            out[f"{n}x{len(features)}"] = {
                "p50_us": float(np.median(p50s)),
                "p50_min": min(p50s),
                "p50_max": max(p50s),
                "p99_us": float(np.median(p99s)),
                "p99_min": min(p99s),
                "p99_max": max(p99s),
            }
        store.close()
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cmd(args: argparse.Namespace) -> int:
    figures = run_online_reads(
        accounts=args.accounts, events=args.events, calls=args.calls, repeats=args.repeats
    )
    if args.json:
        print(orjson.dumps(figures).decode())
        return 0
    for name, f in figures.items():
        print(
            f"{name:<8} p50 {f['p50_us']:8.1f} µs ({f['p50_min']:.1f}-{f['p50_max']:.1f})   "
            f"p99 {f['p99_us']:8.1f} µs ({f['p99_min']:.1f}-{f['p99_max']:.1f})"
        )
    return 0


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--accounts", type=int, default=100_000, help="accounts in the store")
    p.add_argument("--events", type=int, default=1_000_000, help="speed tests aggregated")
    p.add_argument("--calls", type=int, default=3000, help="reads timed per repeat")
    p.add_argument("--repeats", type=int, default=5, help="repeats (median, min, max)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=_cmd)


def register(bench_sub: argparse._SubParsersAction) -> None:
    """Add `online-reads` to the `streamml bench` subcommands."""
    p = bench_sub.add_parser(
        "online-reads",
        help="get_features latency: 1 and 100 entities x 10 features, in process",
        description=(__doc__ or "").split("\n\n")[0],
    )
    _add_arguments(p)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from `python -m streamml.benchmarks.online_reads`."""
    parser = argparse.ArgumentParser(prog="python -m streamml.benchmarks.online_reads")
    _add_arguments(parser)
    return int(parser.parse_args(argv).func(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
