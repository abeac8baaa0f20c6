"""Scoring benchmark: the Bytewax scoring operator vs bare ONNX Runtime, and single-row latency.

Run with `streamml bench scoring [--rows N --batch-size B]` or
`python -m streamml.benchmarks.scoring`.
It scores the bundled triage model (seeded into a temporary registry unless `--registry` names
one) on generated speed tests, in the same process and on the same batches:

- bare ONNX Runtime: one `session.run` per batch matrix;
- the `score` operator in a Bytewax dataflow fed `ScoreBatch` items (one matrix per item);
- the same operator fed one `ScoreRequest` per row (Bytewax batches of `--batch-size`);
- single-row latency of the operator's scoring logic (`Scorer.score_batch([request])`) and of a
  bare one-row `session.run`, as p50/p99.

Every timed run checks its predicted classes against bare ONNX Runtime and fails loudly if they
differ. Throughput runs are repeated `--repeat` times, interleaved, and the best of each is kept.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import bytewax.operators as op
import numpy as np
import orjson
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from streamml.onnx_models import (
    ModelRegistry,
    create_session,
    ensure_demo_registry,
    generate_speedtests,
)
from streamml.operators.scoring import (
    Prediction,
    PredictionBatch,
    ScoreBatch,
    Scorer,
    ScoreRequest,
    ScoringConfig,
    score,
)

__all__ = [
    "ScoringBenchConfig",
    "ScoringBenchResult",
    "format_table",
    "main",
    "register",
    "run_scoring_bench",
]

_OVERHEAD_TARGET = 0.10
_P99_TARGET_US = 50.0


@dataclass(frozen=True)
class ScoringBenchConfig:
    """What the scoring benchmark runs."""

    rows: int = 200_000
    batch_size: int = 1024
    latency_rows: int = 20_000
    repeat: int = 3
    seed: int = 42
    intra_op_threads: int = 1
    registry_dir: Path | None = None
    model: str = "speedtest-triage"
    version: str | None = None


@dataclass(frozen=True)
class ScoringBenchResult:
    """Measured figures of one benchmark run."""

    model: str
    rows: int
    batch_size: int
    bare_rows_per_s: float
    flow_batch_rows_per_s: float
    flow_row_rows_per_s: float
    batch_overhead: float
    row_overhead: float
    bare_cpu_rows_per_s: float
    flow_batch_cpu_rows_per_s: float
    flow_row_cpu_rows_per_s: float
    batch_cpu_overhead: float
    row_cpu_overhead: float
    load_average: float
    scorer_p50_us: float
    scorer_p99_us: float
    bare_p50_us: float
    bare_p99_us: float
    overhead_target: float = _OVERHEAD_TARGET
    p99_target_us: float = _P99_TARGET_US

    @property
    def overhead_met(self) -> bool:
        """True when the batched dataflow path is within the overhead target."""
        return max(self.batch_overhead, self.batch_cpu_overhead) <= self.overhead_target

    @property
    def p99_met(self) -> bool:
        """True when the single-row p99 is within the latency target."""
        return self.scorer_p99_us <= self.p99_target_us


@dataclass(frozen=True)
class _Times:
    wall: float
    cpu: float

    @classmethod
    def start(cls) -> _Times:
        return cls(time.perf_counter(), time.process_time())

    def stop(self) -> _Times:
        return _Times(time.perf_counter() - self.wall, time.process_time() - self.cpu)

    def best(self, other: _Times) -> _Times:
        return _Times(min(self.wall, other.wall), min(self.cpu, other.cpu))


def _progress(msg: str) -> None:
    if sys.stderr.isatty():
        print(f"\r\033[K{msg}", end="", file=sys.stderr, flush=True)
    else:
        print(msg, file=sys.stderr, flush=True)


def _bare(sess: Any, batches: Sequence[np.ndarray]) -> tuple[_Times, np.ndarray]:
    t = _Times.start()
    labels = [sess.run(["label"], {"features": b})[0] for b in batches]
    return t.stop(), np.concatenate(labels).astype(str)


def _flow(
    config: ScoringConfig, items: list[ScoreBatch] | list[ScoreRequest], batch_size: int
) -> tuple[_Times, list[Any], list[Any]]:
    """Score `items` in a dataflow, `batch_size` items per source batch, and time it."""
    flow = Dataflow("bench_scoring")
    inp = op.input("in", flow, TestingSource(items, batch_size=batch_size))
    outs = score("score", inp, config)
    oks: list[Any] = []
    errs: list[Any] = []
    op.output("oks", outs.oks, TestingSink(oks))
    op.output("errs", outs.errs, TestingSink(errs))
    t = _Times.start()
    run_main(flow)
    return t.stop(), oks, errs


def _percentiles(ns: np.ndarray) -> tuple[float, float]:
    p50, p99 = np.percentile(ns, [50, 99])
    return float(p50) / 1000.0, float(p99) / 1000.0


def run_scoring_bench(cfg: ScoringBenchConfig) -> ScoringBenchResult:
    """Run the benchmark and return its figures; raises `AssertionError` on a wrong result."""
    if cfg.rows < cfg.batch_size or cfg.batch_size < 1:
        raise ValueError(
            f"expected rows >= batch-size >= 1, got rows={cfg.rows} batch-size={cfg.batch_size}"
        )
    with tempfile.TemporaryDirectory() as tmp:
        if cfg.registry_dir is None:
            v = ensure_demo_registry(Path(tmp) / "registry")
            registry = ModelRegistry(Path(tmp) / "registry")
        else:
            registry = ModelRegistry(cfg.registry_dir)
            v = registry.show(cfg.model, cfg.version)
        return _run(cfg, registry, v.name, v.version)


def _run(
    cfg: ScoringBenchConfig, registry: ModelRegistry, name: str, version: str
) -> ScoringBenchResult:
    config = ScoringConfig(registry_dir=registry.root, intra_op_threads=cfg.intra_op_threads)
    _progress(f"generating {cfg.rows} speed tests...")
    X = generate_speedtests(cfg.rows, cfg.seed).X
    n_batches = cfg.rows // cfg.batch_size
    rows = n_batches * cfg.batch_size
    X = X[:rows]
    batches = [X[i : i + cfg.batch_size] for i in range(0, rows, cfg.batch_size)]
    ids = [f"r{i}" for i in range(rows)]
    batch_items = [
        ScoreBatch(name, version, ids[i : i + cfg.batch_size], b)
        for i, b in zip(range(0, rows, cfg.batch_size), batches, strict=True)
    ]
    row_items = [ScoreRequest(ids[i], name, version, X[i]) for i in range(rows)]

    sess = create_session(
        registry.load_bytes(name, version),
        intra_op_threads=cfg.intra_op_threads,
        providers=config.providers,
    )
    inf = _Times(float("inf"), float("inf"))
    bare_best = flow_b_best = flow_r_best = inf
    _, expected = _bare(sess, batches[:2])  # warm-up
    for rep in range(cfg.repeat):
        _progress(f"[{rep + 1}/{cfg.repeat}] bare ONNX Runtime on {n_batches} batches...")
        dt, expected = _bare(sess, batches)
        bare_best = bare_best.best(dt)

        _progress(f"[{rep + 1}/{cfg.repeat}] dataflow, ScoreBatch items...")
        dt, oks, errs = _flow(config, batch_items, 1)
        assert not errs, f"unexpected scoring errors: {errs[:3]}"
        assert all(isinstance(o, PredictionBatch) for o in oks)
        got = np.concatenate([o.labels for o in oks]).astype(str)
        assert got.shape == expected.shape and bool(np.all(got == expected)), (
            "dataflow (batches) disagrees with bare ONNX Runtime"
        )
        flow_b_best = flow_b_best.best(dt)

        _progress(f"[{rep + 1}/{cfg.repeat}] dataflow, one ScoreRequest per row...")
        dt, oks, errs = _flow(config, row_items, cfg.batch_size)
        assert not errs, f"unexpected scoring errors: {errs[:3]}"
        assert len(oks) == rows and all(isinstance(o, Prediction) for o in oks)
        by_id = {o.request_id: o.label for o in oks}
        assert [by_id[i] for i in ids] == expected.tolist(), (
            "dataflow (rows) disagrees with bare ONNX Runtime"
        )
        flow_r_best = flow_r_best.best(dt)

    _progress(f"single-row latency over {cfg.latency_rows} rows...")
    scorer = Scorer(config)
    n_lat = min(cfg.latency_rows, rows)
    reqs = [[ScoreRequest(ids[i], name, version, X[i])] for i in range(n_lat)]
    scorer.score_batch(reqs[0])  # load the session outside the timing
    lat_scorer = np.empty(n_lat, dtype=np.int64)
    lat_bare = np.empty(n_lat, dtype=np.int64)
    single = [X[i : i + 1] for i in range(n_lat)]
    clock = time.perf_counter_ns
    for i in range(n_lat):
        t0 = clock()
        res = scorer.score_batch(reqs[i])
        t1 = clock()
        sess.run(None, {"features": single[i]})
        t2 = clock()
        lat_scorer[i] = t1 - t0
        lat_bare[i] = t2 - t1
        if res[0].label != expected[i]:  # type: ignore[union-attr]
            raise AssertionError(f"row {i}: scorer says {res[0]!r}, bare ORT {expected[i]!r}")
    if sys.stderr.isatty():
        print(file=sys.stderr)
    s50, s99 = _percentiles(lat_scorer)
    b50, b99 = _percentiles(lat_bare)
    return ScoringBenchResult(
        model=f"{name}@{version}",
        rows=rows,
        batch_size=cfg.batch_size,
        bare_rows_per_s=rows / bare_best.wall,
        flow_batch_rows_per_s=rows / flow_b_best.wall,
        flow_row_rows_per_s=rows / flow_r_best.wall,
        batch_overhead=1.0 - bare_best.wall / flow_b_best.wall,
        row_overhead=1.0 - bare_best.wall / flow_r_best.wall,
        bare_cpu_rows_per_s=rows / bare_best.cpu,
        flow_batch_cpu_rows_per_s=rows / flow_b_best.cpu,
        flow_row_cpu_rows_per_s=rows / flow_r_best.cpu,
        batch_cpu_overhead=1.0 - bare_best.cpu / flow_b_best.cpu,
        row_cpu_overhead=1.0 - bare_best.cpu / flow_r_best.cpu,
        load_average=os.getloadavg()[0],
        scorer_p50_us=s50,
        scorer_p99_us=s99,
        bare_p50_us=b50,
        bare_p99_us=b99,
    )


def format_table(r: ScoringBenchResult) -> str:
    """Return the summary table of a result."""
    ok = {True: "met", False: "MISSED"}
    head = ("path", "rows/s (wall)", "overhead", "rows/s (CPU)", "overhead (CPU)")
    rows = [
        head,
        (
            "bare ONNX Runtime, batches",
            f"{r.bare_rows_per_s:,.0f}",
            "-",
            f"{r.bare_cpu_rows_per_s:,.0f}",
            "-",
        ),
        (
            "dataflow, ScoreBatch items",
            f"{r.flow_batch_rows_per_s:,.0f}",
            f"{r.batch_overhead:+.1%}",
            f"{r.flow_batch_cpu_rows_per_s:,.0f}",
            f"{r.batch_cpu_overhead:+.1%}",
        ),
        (
            "dataflow, ScoreRequest per row",
            f"{r.flow_row_rows_per_s:,.0f}",
            f"{r.row_overhead:+.1%}",
            f"{r.flow_row_cpu_rows_per_s:,.0f}",
            f"{r.row_cpu_overhead:+.1%}",
        ),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    title = (
        f"scoring {r.model}: {r.rows:,} rows in batches of {r.batch_size} "
        f"(1-min load average {r.load_average:.1f})"
    )
    lines = [title, ""]
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += [
        "",
        f"single row, Scorer.score_batch:    p50 {r.scorer_p50_us:.1f} µs  "
        f"p99 {r.scorer_p99_us:.1f} µs",
        f"single row, bare session.run:      p50 {r.bare_p50_us:.1f} µs  "
        f"p99 {r.bare_p99_us:.1f} µs",
        "",
        f"target: ScoreBatch overhead <= {r.overhead_target:.0%} (wall and CPU): "
        f"{ok[r.overhead_met]}",
        f"target: single-row p99 <= {r.p99_target_us:.0f} µs: {ok[r.p99_met]}",
    ]
    return "\n".join(lines)


def _cmd(args: argparse.Namespace) -> int:
    cfg = ScoringBenchConfig(
        rows=args.rows,
        batch_size=args.batch_size,
        latency_rows=args.latency_rows,
        repeat=args.repeat,
        intra_op_threads=args.intra_op_threads,
        registry_dir=args.registry,
        model=args.model,
        version=args.version,
    )
    try:
        result = run_scoring_bench(cfg)
    except (ValueError, OSError) as exc:
        print(f"streamml bench scoring: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        data = asdict(result)
        data["overhead_met"] = result.overhead_met
        data["p99_met"] = result.p99_met
        print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_table(result))
    return 0


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=int, default=200_000, help="rows to score (default: %(default)s)")
    p.add_argument(
        "--batch-size", type=int, default=1024, help="rows per batch (default: %(default)s)"
    )
    p.add_argument(
        "--latency-rows",
        type=int,
        default=20_000,
        help="single-row calls for the latency percentiles (default: %(default)s)",
    )
    p.add_argument("--repeat", type=int, default=3, help="throughput repeats, best kept")
    p.add_argument("--intra-op-threads", type=int, default=1, help="ORT intra-op threads")
    p.add_argument(
        "--registry",
        type=Path,
        default=None,
        help="score a model from this registry (default: the bundled model in a temp registry)",
    )
    p.add_argument("--model", default="speedtest-triage", help="model name with --registry")
    p.add_argument("--version", default=None, help="model version with --registry (default: live)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=_cmd)


def register(bench_sub: argparse._SubParsersAction) -> None:
    """Add `scoring` to the `streamml bench` subcommands."""
    p = bench_sub.add_parser(
        "scoring",
        help="scoring operator in a dataflow vs bare ONNX Runtime, and single-row latency",
        description=(__doc__ or "").split("\n\n")[0],
    )
    _add_arguments(p)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from `python -m streamml.benchmarks.scoring`."""
    parser = argparse.ArgumentParser(prog="python -m streamml.benchmarks.scoring")
    _add_arguments(parser)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
