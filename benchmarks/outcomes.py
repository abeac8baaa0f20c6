"""Outcome join: throughput of `streamml run outcomes` and its memory with many pending predictions.

A prediction store of `--predictions` rows (one answering variant per request, the prediction
store's real schema, requests spread over a day) is written directly as Parquet; the outcomes
of a share `--observed` of them, observed minutes to hours later, go to a JSON lines file. The
flow runs as the CLI runs it (worker process, default settings, its recovery dir), `--repeats` times
on a fresh join state: figures are medians with min and max. Without outcomes (`--observed 0`)
every prediction stays pending in RocksDB, which shows the memory the wait costs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
from streamml.dataflows.outcomes import OutcomesFlowConfig, prepare
from streamml.state._parquet import write_part
from streamml.state.predictions import FEATURE_TYPE, LATENCY_TYPE, PREDICTION_SCHEMA

from streamml.recovery import ensure_recovery_dir, recovery_args
from streamml.runner import run_flow_processes

__all__ = ["register", "run_outcome_bench"]

START = 1_767_225_600_000
DAY = 86_400_000
CLASSES = ["wifi", "modem", "network"]
_FILE_ROWS = 500_000


def _store(root: Path, n: int, seed: int) -> np.ndarray:
    """Write `n` prediction rows in files of `_FILE_ROWS`; return their request times."""
    rng = np.random.default_rng(seed)
    ts = np.sort(START + rng.integers(0, DAY, n))
    for part, lo in enumerate(range(0, n, _FILE_ROWS)):
        hi = min(n, lo + _FILE_ROWS)
        m = hi - lo
        probs = rng.dirichlet([1.0, 1.0, 1.0], m).astype(np.float32)
        label = np.asarray(CLASSES)[probs.argmax(axis=1)]
        offsets = pa.array(np.arange(0, 3 * m + 1, 3, dtype=np.int32))
        ts_col = pa.array(ts[lo:hi], pa.int64()).cast(PREDICTION_SCHEMA.field("request_ts").type)
        table = pa.table(
            {
                "request_id": pa.array([f"r{i}" for i in range(lo, hi)]),
                "model": pa.array(["m"] * m),
                "version": pa.array(["1"] * m),
                "variant": pa.array(["live"] * m),
                "role": pa.array(["answer"] * m),
                "account": pa.array([f"acct-{i % 100_000:08d}" for i in range(lo, hi)]),
                "request_ts": ts_col,
                "label": pa.array(label),
                "probabilities": pa.ListArray.from_arrays(offsets, pa.array(probs.ravel())),
                "classes": pa.ListArray.from_arrays(offsets, pa.array(CLASSES * m)),
                "features": pa.array([[]] * m, pa.list_(FEATURE_TYPE)),
                "sha256": pa.array(["0" * 64] * m),
                "metadata_revision": pa.array(np.ones(m, np.int64)),
                "pipeline_version": pa.array(["bench"] * m),
                "latency": pa.array([None] * m, LATENCY_TYPE),
                "scored_at": ts_col,
            },
            schema=PREDICTION_SCHEMA,
        )
        write_part(root / "predictions" / "date=2026-01-01", "bench", part, table)
    return ts


def _outcomes(path: Path, ts: np.ndarray, observed: float, seed: int) -> int:
    rng = np.random.default_rng(seed + 1)
    chosen = np.flatnonzero(rng.random(len(ts)) < observed)
    seen = ts[chosen] + rng.integers(60_000, 6 * 3_600_000, len(chosen))
    order = np.argsort(seen, kind="stable")
    with open(path, "wb") as f:
        for i in order.tolist():
            r = int(chosen[i])
            body = {"request_id": f"r{r}", "outcome": CLASSES[r % 3], "observed_at": int(seen[i])}
            f.write(orjson.dumps(body) + b"\n")
    return len(chosen)


def run_outcome_bench(
    predictions: int, observed: float, repeats: int = 3, seed: int = 5
) -> dict[str, float]:
    """Run the benchmark; return its figures."""
    root = Path(tempfile.mkdtemp(prefix="streamml-bench-outcomes-"))
    try:
        store = root / "store"
        ts = _store(store, predictions, seed)
        n_outcomes = _outcomes(root / "outcomes.jsonl", ts, observed, seed)
        walls, rss, matched = [], [], 0
        for i in range(repeats):
            config = OutcomesFlowConfig(
                prediction_store=store,
                paths=(str(root / "outcomes.jsonl"),),
                join_dir=root / f"join-{i}",
                reports_out=root / f"reports-{i}.jsonl",
                stats_path=root / f"stats-{i}.json",
            )
            prepare(config)
            ensure_recovery_dir(config.recovery)
            result = run_flow_processes(
                "streamml.dataflows.outcomes:flow",
                config.to_env(),
                stats_path=config.stats_path,
                extra_args=recovery_args(config.recovery, 10),
            )
            if result.returncode != 0:
                raise RuntimeError(f"the outcome flow failed (exit {result.returncode})")
            walls.append(result.wall_s)
            rss.append(result.peak_rss_bytes / 2**20)
            matched = result.counters.get("matched", 0)
            pending = sum(f.stat().st_size for f in (root / f"join-{i}").rglob("*") if f.is_file())
            shutil.rmtree(store / "outcomes", ignore_errors=True)
        items = predictions + n_outcomes
        wall = float(np.median(walls))
        return {
            "predictions": predictions,
            "outcomes": n_outcomes,
            "matched": matched,
            "wall_s": wall,
            "wall_min": min(walls),
            "wall_max": max(walls),
            "items_per_s": items / wall,
            "outcomes_per_s": n_outcomes / wall,
            "peak_rss_mib": float(np.median(rss)),
            "rss_min": min(rss),
            "rss_max": max(rss),
            "join_state_mib": pending / 2**20,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _cmd(args: argparse.Namespace) -> int:
    f = run_outcome_bench(args.predictions, args.observed, args.repeats)
    if args.json:
        print(orjson.dumps(f).decode())
        return 0
    print(
        f"{f['predictions']:,} predictions + {f['outcomes']:,} outcomes -> {f['matched']:,} "
        f"matched: {f['wall_s']:.1f} s (min {f['wall_min']:.1f}, max {f['wall_max']:.1f}), "
        f"{f['items_per_s']:,.0f} items/s, {f['outcomes_per_s']:,.0f} outcomes/s; peak RSS "
        f"{f['peak_rss_mib']:.0f} MiB ({f['rss_min']:.0f}-{f['rss_max']:.0f}); join state "
        f"on disk {f['join_state_mib']:.0f} MiB"
    )
    return 0


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--predictions", type=int, default=1_000_000, help="prediction rows")
    p.add_argument(
        "--observed", type=float, default=0.9, help="share of predictions with an outcome"
    )
    p.add_argument("--repeats", type=int, default=3, help="runs timed")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=_cmd)


def register(bench_sub: argparse._SubParsersAction) -> None:
    """Add `outcomes` to the `streamml bench` subcommands."""
    p = bench_sub.add_parser(
        "outcomes",
        help="outcome join: outcomes/s and memory with many pending predictions",
        description=(__doc__ or "").split("\n\n")[0],
    )
    _add_arguments(p)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from `python -m streamml.benchmarks.outcomes`."""
    parser = argparse.ArgumentParser(prog="python -m streamml.benchmarks.outcomes")
    _add_arguments(parser)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
