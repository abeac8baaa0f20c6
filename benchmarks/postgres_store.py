"""Online stores side by side: PostgreSQL (`PostgresStore`) and RocksDB (`RollingStateStore`).

Run with `streamml bench online-stores` or `python -m streamml.benchmarks.postgres_store`.
Both stores get the same state records (fixed-size numpy records of `--record-bytes`, as the state
engine writes them) for `--entities` entities in batches of `--batch-size`, each batch with its
applied source position, as the flow commits them:

- ingest: rows/s of the first write of every entity (inserts), then of a second pass over the
  same entities with new records (updates, the steady state of a flow);
- reads: p50/p99 of loading 1 entity and 100 entities (random, all present) into a records array,
  over `--reads` calls each after a warm-up. PostgreSQL reads go through a second connection (a
  reader beside the writer, as `get_features` reads); RocksDB reads the writer's instance.

Each repeat uses a fresh table / database; the figures are medians over `--repeat` runs with their
range. Each run checks itself after the clock stops: every entity's stored record equals the last
one written and the applied position is the last batch's. Without `--dsn` a PostgreSQL server with
default (durable) settings is started on a free loopback port with a temporary data dir.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import orjson
from streamml.state.postgres import PostgresStore
from streamml.state.postgres_server import PostgresServerError, start_postgres
from streamml.state.rolling_store import RollingStateStore, record_dtype

from streamml.console import Progress, format_table

__all__ = [
    "OnlineStoresBenchConfig",
    "OnlineStoresBenchResult",
    "format_result",
    "main",
    "register",
    "run_online_stores_bench",
]

_PARTITION = "bench-0"
_VERSION = "bench-v1"


@dataclass(frozen=True)
class OnlineStoresBenchConfig:
    """What the online-stores benchmark runs."""

    entities: int = 100_000
    batch_size: int = 10_000
    record_bytes: int = 120
    reads: int = 2_000
    repeat: int = 5
    seed: int = 7
    dsn: str | None = None
    durable: bool = True


@dataclass
class OnlineStoresBenchResult:
    """Per store, per metric, the value of every repeat (rows/s or microseconds)."""

    config: OnlineStoresBenchConfig
    runs: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    load_average: float = 0.0
    server: str = ""

    def median(self, store: str, metric: str) -> float:
        """Median over the repeats."""
        return float(np.median(self.runs[store][metric]))


_METRICS = [
    ("insert_rows_s", "ingest, first write (rows/s)"),
    ("update_rows_s", "ingest, update (rows/s)"),
    ("read1_p50_us", "read 1 entity p50 (µs)"),
    ("read1_p99_us", "read 1 entity p99 (µs)"),
    ("read100_p50_us", "read 100 entities p50 (µs)"),
    ("read100_p99_us", "read 100 entities p99 (µs)"),
]


@dataclass(frozen=True)
class _Store:
    """The two stores behind one shape: commit a batch, load records into an array."""

    commit: Callable[[list[bytes], np.ndarray, int], None]
    load: Callable[[list[bytes]], np.ndarray]
    position: Callable[[], int]
    close: Callable[[], None]


def _postgres(dsn: str, namespace: str, dtype: np.dtype) -> _Store:
    writer = PostgresStore(dsn, namespace)
    reader = PostgresStore(dsn, namespace)
    size = dtype.itemsize

    def commit(entities: list[bytes], records: np.ndarray, position: int) -> None:
        buf = records.tobytes()
        rows = [buf[i : i + size] for i in range(0, len(buf), size)]
        writer.commit(entities, rows, records["updated_at"], _VERSION, {_PARTITION: position})

    def load(entities: list[bytes]) -> np.ndarray:
        raw = reader.load(entities)
        if any(r is None for r in raw):
            raise AssertionError("an entity written before the reads was not found")
        return np.frombuffer(b"".join(raw), dtype=dtype)  # type: ignore[arg-type]

    def close() -> None:
        reader.close()
        writer.drop()
        writer.close()

    return _Store(commit, load, lambda: writer.applied_position(_PARTITION), close)


def _rocksdb(path: Path, window: int) -> _Store:
    db = RollingStateStore(path, feature=1, window=window)

    def commit(entities: list[bytes], records: np.ndarray, position: int) -> None:
        db.commit(entities, records, {_PARTITION: position})

    return _Store(commit, db.load, lambda: db.applied_position(_PARTITION), db.close)


def _records(rng: np.random.Generator, n: int, window: int, pass_no: int) -> np.ndarray:
    rec = np.zeros(n, dtype=record_dtype(window))
    rec["max_bucket"] = rng.integers(0, 1 << 20, n)
    rec["updated_at"] = rng.integers(0, 1 << 40, n)
    rec["flags"] = pass_no
    rec["counts"] = rng.integers(0, 1000, (n, window))
    return rec


def _percentiles_us(ns: list[int]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.asarray(ns, dtype=np.float64), [50, 99])
    return float(p50) / 1000.0, float(p99) / 1000.0


def _one_run(
    cfg: OnlineStoresBenchConfig,
    store: _Store,
    entities: list[bytes],
    passes: list[np.ndarray],
    rng: np.random.Generator,
) -> dict[str, float]:
    out: dict[str, float] = {}
    b = cfg.batch_size
    for name, records in zip(("insert_rows_s", "update_rows_s"), passes, strict=True):
        t = time.perf_counter()
        for i in range(0, len(entities), b):
            store.commit(entities[i : i + b], records[i : i + b], i + b - 1)
        out[name] = len(entities) / (time.perf_counter() - t)
    for size, key in ((1, "read1"), (100, "read100")):
        picks = [rng.integers(0, len(entities), size) for _ in range(cfg.reads + 100)]
        asks = [[entities[j] for j in p] for p in picks]
        for ask in asks[:100]:  # warm-up: prepared statements, caches
            store.load(ask)
        times: list[int] = []
        for ask in asks[100:]:
            t0 = time.perf_counter_ns()
            store.load(ask)
            times.append(time.perf_counter_ns() - t0)
        out[f"{key}_p50_us"], out[f"{key}_p99_us"] = _percentiles_us(times)
        got = store.load(asks[-1])
        if got.tobytes() != passes[-1][picks[-1]].tobytes():
            raise AssertionError(f"{key}: the records read are not the last ones written")
    every = store.load(entities)
    if every.tobytes() != passes[-1].tobytes():
        raise AssertionError("the stored records differ from the last ones written")
    last = (len(entities) - 1) // b * b + b - 1
    if store.position() != last:
        raise AssertionError(f"applied position {store.position()}, expected {last}")
    return out


@contextlib.contextmanager
def _server(cfg: OnlineStoresBenchConfig) -> Iterator[str]:
    if cfg.dsn is not None:
        yield cfg.dsn
        return
    with start_postgres(durable=cfg.durable) as server:
        yield server.dsn


def run_online_stores_bench(
    cfg: OnlineStoresBenchConfig, progress: Progress | None = None
) -> OnlineStoresBenchResult:
    """Run the benchmark and return its figures; raises `AssertionError` on a wrong result."""
    if cfg.record_bytes < 24 or (cfg.record_bytes - 20) % 4 != 0:
        raise ValueError(
            f"record-bytes must be 20 + 4 * window (>= 24) to be a rolling state record, "
            f"got {cfg.record_bytes}; e.g. 120 (a window of 25 buckets)"
        )
    if cfg.entities < 100 or not 1 <= cfg.batch_size <= cfg.entities or cfg.reads < 1:
        raise ValueError(
            f"expected entities >= 100, 1 <= batch-size <= entities and reads >= 1, got "
            f"{cfg.entities}, {cfg.batch_size}, {cfg.reads}"
        )
    progress = progress or Progress()
    window = (cfg.record_bytes - 20) // 4
    dtype = record_dtype(window)
    rng = np.random.default_rng(cfg.seed)
    entities = [b"acct-%08d" % i for i in rng.permutation(cfg.entities)]
    passes = [_records(rng, cfg.entities, window, p) for p in (1, 2)]
    result = OnlineStoresBenchResult(config=cfg)
    result.runs = {"postgresql": {}, "rocksdb": {}}
    stamp = f"{os.getpid()}_{int(time.time())}"
    with _server(cfg) as dsn, tempfile.TemporaryDirectory(prefix="bench-online-") as tmp:
        result.server = dsn if cfg.dsn else f"temporary server (durable={cfg.durable})"
        for rep in range(cfg.repeat):
            for name in ("postgresql", "rocksdb"):  # interleaved, so load changes hit both
                progress.update(f"[{rep + 1}/{cfg.repeat}] {name}...")
                if name == "postgresql":
                    store = _postgres(dsn, f"bench_{stamp}_{rep}", dtype)
                else:
                    store = _rocksdb(Path(tmp) / f"rocksdb-{rep}", window)
                try:
                    figures = _one_run(cfg, store, entities, passes, np.random.default_rng(rep))
                finally:
                    store.close()
                for metric, value in figures.items():
                    result.runs[name].setdefault(metric, []).append(value)
    progress.done()
    result.load_average = os.getloadavg()[0]
    return result


def format_result(r: OnlineStoresBenchResult) -> str:
    """Return the summary table: medians with the range over the repeats."""

    def cell(store: str, metric: str) -> str:
        values = r.runs[store][metric]
        fmt = "{:,.0f}" if metric.endswith("rows_s") else "{:,.1f}"
        lo, hi = min(values), max(values)
        return f"{fmt.format(r.median(store, metric))} ({fmt.format(lo)}-{fmt.format(hi)})"

    rows = [(label, cell("postgresql", m), cell("rocksdb", m)) for m, label in _METRICS]
    c = r.config
    title = (
        f"online stores: {c.entities:,} entities in batches of {c.batch_size:,}, records of "
        f"{c.record_bytes} bytes, {c.reads:,} reads per latency figure; median (min-max) of "
        f"{c.repeat} runs; PostgreSQL: {r.server}; 1-min load average {r.load_average:.1f}"
    )
    table = format_table(rows, headers=("", "PostgreSQL", "RocksDB"))
    return f"{title}\n\n{table}"


def _cmd(args: argparse.Namespace) -> int:
    cfg = OnlineStoresBenchConfig(
        entities=args.entities,
        batch_size=args.batch_size,
        record_bytes=args.record_bytes,
        reads=args.reads,
        repeat=args.repeat,
        seed=args.seed,
        dsn=args.dsn,
        durable=not args.no_fsync,
    )
    try:
        result = run_online_stores_bench(cfg)
    except (ValueError, OSError, PostgresServerError) as exc:
        print(f"streamml bench online-stores: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        data = asdict(result)
        data["config"]["durable"] = cfg.durable
        print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    else:
        print(format_result(result))
    return 0


def _add_arguments(p: argparse.ArgumentParser) -> None:
    d = OnlineStoresBenchConfig()
    p.add_argument(
        "--entities", type=int, default=d.entities, help="entities (default: %(default)s)"
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="entities per commit")
    p.add_argument(
        "--record-bytes", type=int, default=d.record_bytes, help="bytes per state record"
    )
    p.add_argument("--reads", type=int, default=d.reads, help="calls per latency figure")
    p.add_argument("--repeat", type=int, default=d.repeat, help="runs; medians are reported")
    p.add_argument("--seed", type=int, default=d.seed, help="generator seed")
    p.add_argument(
        "--dsn",
        default=None,
        help="use this PostgreSQL server (default: start a temporary one on a loopback port)",
    )
    p.add_argument(
        "--no-fsync",
        action="store_true",
        help="start the temporary server with fsync and synchronous commit off",
    )
    p.add_argument("--json", action="store_true", help="print every run's figures as JSON")
    p.set_defaults(func=_cmd)


def register(bench_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `online-stores` to the `streamml bench` subcommands."""
    p = bench_sub.add_parser(
        "online-stores",
        help="ingest rows/s and read p50/p99 of PostgreSQL and RocksDB online stores",
        description=(__doc__ or "").split("\n\n")[0],
    )
    _add_arguments(p)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from `python -m streamml.benchmarks.postgres_store`."""
    parser = argparse.ArgumentParser(prog="python -m streamml.benchmarks.postgres_store")
    _add_arguments(parser)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
