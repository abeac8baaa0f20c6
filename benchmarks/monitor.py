"""Live performance metrics: `compute_store_metrics` on 1M predictions and 900k outcomes.

Builds a prediction store and an outcome store with the real schemas (Parquet by day, as the
writers lay them out): `--predictions` rows over seven days, three variants of the bundled
triage model (live, an A/B arm, a shadow), the bundled model's ten features per row with
statuses drawn as a flow logs them, and outcomes for `--outcomes` of the rows. Then times the
whole run (read the stores, compute every metric of every hour, day and cumulative window,
write the metrics table) `--repeats` times, all days computed, and checks the counts and one
accuracy against numpy; then adds a file of 1% more predictions to the last day and times the
incremental run (that one day computed again, the others' statistics summed from their files).
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
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from streamml.onnx_models.bundle import ensure_demo_registry
from streamml.onnx_models.data import CLASSES, FEATURE_NAMES
from streamml.operators.monitoring_store import compute_store_metrics, read_metrics
from streamml.state.outcomes import OUTCOME_SCHEMA, OUTCOMES_DIR
from streamml.state.predictions import (
    FEATURE_STATUSES,
    FEATURE_TYPE,
    LATENCY_TYPE,
    PREDICTION_SCHEMA,
    PREDICTIONS_DIR,
)

__all__ = ["build_store", "register", "run_monitor"]

_DAY_MS = 86_400_000
_T0 = 1_767_225_600_000
_VARIANTS = ("live", "ab-b", "shadow-1")


def _lists(values: pa.Array, width: int, n: int) -> pa.ListArray:
    return pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * width), values)


def build_store(
    root: Path, predictions: int, outcomes: int, seed: int = 1, *, days: int = 7, part: int = 0
) -> dict[str, float]:
    """Write the synthetic stores under `root`; return the live variant's accuracy.

    Requests fall in the last `days` of seven days; `part` numbers the files of each day.
    """
    rng = np.random.default_rng(seed)
    n, k, nf = predictions, len(CLASSES), len(FEATURE_NAMES)
    ts = np.sort(_T0 + (7 - days) * _DAY_MS + rng.integers(0, days * _DAY_MS, n))
    variant = rng.integers(0, len(_VARIANTS), n)
    probs = rng.dirichlet(np.ones(k) * 0.6, n).astype(np.float32)
    label = probs.argmax(axis=1)
    truth = (rng.random(n)[:, None] > np.cumsum(probs, axis=1)).sum(axis=1).clip(0, k - 1)
    values = rng.normal(50, 20, n * nf)
    status = rng.choice(len(FEATURE_STATUSES), n * nf, p=[0.8, 0.05, 0.03, 0.1, 0.02])
    missing = FEATURE_STATUSES.index("missing")
    value = pa.array(values, pa.float64(), mask=status == missing)
    names = pa.DictionaryArray.from_arrays(
        pa.array(np.tile(np.arange(nf, dtype=np.int32), n)), pa.array(FEATURE_NAMES)
    ).cast(pa.string())
    statuses = pa.DictionaryArray.from_arrays(
        pa.array(status.astype(np.int32)), pa.array(FEATURE_STATUSES)
    ).cast(pa.string())
    feats = pa.StructArray.from_arrays(
        [names, value, pa.array(np.repeat(ts - 1000, nf)), pa.array(["1"] * (n * nf)), statuses],
        fields=list(FEATURE_TYPE),
    )
    classes = pa.array(np.tile(np.array(CLASSES, dtype=object), n), pa.string())
    text = np.array(CLASSES, dtype=object)
    common = {
        "request_id": pa.array(np.char.add("r", np.arange(n).astype(str)).astype(object)),
        "model": pa.array(["speedtest-triage"] * n),
        "version": pa.array(["1"] * n),
        "variant": pa.array(np.array(_VARIANTS, dtype=object)[variant]),
        "role": pa.array(np.where(variant == 2, "shadow", "answer").astype(object)),
        "account": pa.array(
            np.char.add("acct-", (np.arange(n) % 100_000).astype(str)).astype(object)
        ),
        "request_ts": pa.array(ts, pa.timestamp("ms", tz="UTC")),
        "label": pa.array(text[label]),
        "probabilities": _lists(pa.array(probs.ravel()), k, n),
        "classes": _lists(classes, k, n),
        "metadata_revision": pa.array(np.ones(n, np.int64)),
    }
    zeros = pa.array(np.zeros(n))
    pred = {
        **common,
        "features": _lists(feats, nf, n),
        "sha256": pa.array(["0" * 64] * n),
        "pipeline_version": pa.array(["predict/1"] * n),
        "latency": pa.StructArray.from_arrays([zeros] * 5, fields=list(LATENCY_TYPE)),
        "scored_at": pa.array(ts + 5, pa.timestamp("ms", tz="UTC")),
    }
    pred_table = pa.table({f.name: pred[f.name] for f in PREDICTION_SCHEMA}, PREDICTION_SCHEMA)
    chosen = np.sort(rng.choice(n, outcomes, replace=False))
    out = {name: arr.take(pa.array(chosen)) for name, arr in common.items()}
    out["outcome"] = pa.array(text[truth[chosen]])
    out["observed_at"] = pa.array(ts[chosen] + _DAY_MS, pa.timestamp("ms", tz="UTC"))
    out["correct"] = pa.array(label[chosen] == truth[chosen])
    out["pipeline_version"] = pa.array(["outcomes/1"] * outcomes)
    out_table = pa.table({f.name: out[f.name] for f in OUTCOME_SCHEMA}, OUTCOME_SCHEMA)
    for table, folder, day_of in (
        (pred_table, PREDICTIONS_DIR, ts // _DAY_MS),
        (out_table, OUTCOMES_DIR, ts[chosen] // _DAY_MS),
    ):
        for day in np.unique(day_of).tolist():
            date = np.datetime64(day, "D").astype(str)
            where = root / folder / f"date={date}"
            where.mkdir(parents=True, exist_ok=True)
            rows = table.filter(pa.array(day_of == day))
            pq.write_table(rows, where / f"part-bench-{part:06d}.parquet")
    live = variant[chosen] == 0
    return {"live_accuracy": float(np.mean(label[chosen][live] == truth[chosen][live]))}


def run_monitor(*, predictions: int, outcomes: int, repeats: int) -> dict[str, float]:
    """Return the seconds of full runs and of an incremental run after one more file.

    Full runs: median, min, max, their parts and microseconds per prediction; the incremental
    run follows a file of 1% more predictions written into the last day.
    """
    root = Path(tempfile.mkdtemp(prefix="streamml-bench-monitor-"))
    try:
        expected = build_store(root, predictions, outcomes)
        ensure_demo_registry(root / "registry")
        runs = []
        for _ in range(repeats):
            run = compute_store_metrics(root, root / "registry", full=True)
            _check(read_metrics(run.path), predictions, outcomes, expected["live_accuracy"])
            runs.append(run)
        took = [r.seconds for r in runs]
        best = runs[int(np.argsort(took)[len(took) // 2])]
        extra = max(1, predictions // 100)
        build_store(root, extra, extra * outcomes // predictions, seed=2, days=1, part=1)
        t0 = time.perf_counter()
        inc = compute_store_metrics(root, root / "registry")
        inc_s = time.perf_counter() - t0
        if inc.days_computed != 1:
            raise AssertionError(f"{inc.days_computed} days computed after one new file")
        table = read_metrics(inc.path)
        _check(table, predictions + extra, outcomes + extra * outcomes // predictions, None)
        return {
            "predictions": predictions,
            "outcomes": outcomes,
            "metric_rows": best.rows,
            "seconds": float(np.median(took)),
            "min": min(took),
            "max": max(took),
            "read_s": best.read_s,
            "compute_s": best.compute_s,
            "write_s": best.write_s,
            "us_per_prediction": float(np.median(took)) / predictions * 1e6,
            "incremental_new_predictions": extra,
            "incremental_rows_read": inc.predictions,
            "incremental_s": inc_s,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _check(table: pa.Table, predictions: int, outcomes: int, live_accuracy: float | None) -> None:
    cum = table.filter(pc.field("window") == "all")
    for metric, want in (("predictions", predictions), ("outcomes", outcomes)):
        got = pc.sum(cum.filter(pc.field("metric") == metric)["value"]).as_py()
        if got != want:
            raise AssertionError(f"cumulative {metric}: {got} != {want}")
    acc = cum.filter((pc.field("metric") == "accuracy") & (pc.field("variant") == "live"))
    if live_accuracy is not None and abs(acc["value"][0].as_py() - live_accuracy) > 1e-12:
        raise AssertionError(f"live accuracy {acc['value'][0]} != {live_accuracy}")
    if cum.filter(pc.field("metric") == "psi").num_rows != 3 * len(FEATURE_NAMES):
        raise AssertionError("expected a cumulative PSI per feature and variant")


def _cmd(args: argparse.Namespace) -> int:
    f = run_monitor(predictions=args.predictions, outcomes=args.outcomes, repeats=args.repeats)
    if args.json:
        print(orjson.dumps(f).decode())
        return 0
    print(
        f"{f['predictions']:,} predictions + {f['outcomes']:,} outcomes -> {f['metric_rows']:,} "
        f"metric rows: {f['seconds']:.2f} s (min {f['min']:.2f}, max {f['max']:.2f}; read "
        f"{f['read_s']:.2f}, compute {f['compute_s']:.2f}, write {f['write_s']:.2f}), "
        f"{f['us_per_prediction']:.2f} us per prediction; then "
        f"{f['incremental_new_predictions']:,} more in the last day: "
        f"{f['incremental_s']:.2f} s (that day's {f['incremental_rows_read']:,} predictions "
        "read again)"
    )
    return 0


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--predictions", type=int, default=1_000_000, help="prediction rows")
    p.add_argument("--outcomes", type=int, default=900_000, help="outcome rows")
    p.add_argument("--repeats", type=int, default=3, help="runs timed")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=_cmd)


def register(bench_sub: argparse._SubParsersAction) -> None:
    """Add `monitor` to the `streamml bench` subcommands."""
    p = bench_sub.add_parser(
        "monitor",
        help="live performance metrics: 1M predictions + 900k outcomes, cost per prediction",
        description=(__doc__ or "").split("\n\n")[0],
    )
    _add_arguments(p)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from `python -m streamml.benchmarks.monitor`."""
    parser = argparse.ArgumentParser(prog="python -m streamml.benchmarks.monitor")
    _add_arguments(parser)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
