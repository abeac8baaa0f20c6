"""Memory soak of the error-count flow on Kafka: a process's RSS must stay flat as records flow.

A topic (a local tansu broker, or ``--brokers``) is filled with ``--events`` generated events keyed
by account (``--accounts``, uniformly drawn), then one flow process reads it to its end. The RSS of
the flow process alone (the broker is another process) is taken when the flow has read 10%, 50%
and 100% of the records (1M, 5M and 10M for the default 10M; each the median of the samples
taken while it read the last 5% of records before the mark), and the run passes when the RSS at
the end is within ``--tolerance`` of the RSS at the first mark. Every record must be read and
accepted, late or dead exactly once. The flow writes the history store, as `streamml run
error-count` does by default, unless ``--no-history``.

Before the flow starts the topic holds every record, so the flow reads as fast as it can: this
soaks the memory of reading, not of waiting.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "SoakResult",
    "fill_topic",
    "register",
    "run_soak",
    "soak_flow",
]

MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class SoakResult:
    """RSS of the flow process at each mark of records read, and how the run went."""

    records: int
    marks: dict[int, int] = field(default_factory=dict)
    """Records read -> median RSS (bytes) of the flow process while it read the `window` records
    up to that many: reading fetches and parses batches of megabytes, so one sample can be tens
    of MiB above or below the memory the process keeps."""
    peak_rss_bytes: int = 0
    flow_s: float = 0.0
    counters: dict[str, int] = field(default_factory=dict)
    samples: tuple[tuple[int, int], ...] = ()
    """(records read, RSS bytes) of every sample, in the order taken."""

    def bytes_per_record(self, after: int) -> float:
        """Least-squares slope of RSS over records read, in bytes per record, from `after` on.

        Fetches of megabytes make single samples jump; a fitted slope over every sample weighs
        them all, where a difference of two marks rests on a few.
        """
        points = [(read, rss) for read, rss in self.samples if read >= after]
        if len(points) < 3:
            raise ValueError(f"{len(points)} samples after {after} records: too few to fit")
        n = len(points)
        mx = sum(r for r, _ in points) / n
        my = sum(m for _, m in points) / n
        sxx = sum((r - mx) ** 2 for r, _ in points)
        if sxx == 0:
            raise ValueError(f"every sample after {after} records was taken at one count")
        return sum((r - mx) * (m - my) for r, m in points) / sxx

    def growth(self) -> float:
        """RSS at the last mark over RSS at the first mark, minus 1."""
        first, last = self.marks[min(self.marks)], self.marks[max(self.marks)]
        return last / first - 1


def _worker_pids() -> list[int]:
    """Return the flow processes this process started (their command runs `streamml.worker`)."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != me:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if b"streamml.worker" in f.read():
                    found.append(int(entry))
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    return found


def fill_topic(
    bootstrap: str,
    topic: str,
    events: int,
    *,
    accounts: int,
    partitions: int,
    seed: int = 7,
    chunk: int = 1_000_000,
    processes: int = 2,
) -> float:
    """Produce `events` generated events keyed by account into `topic`; return the seconds taken.

    Produced `chunk` events at a time, so the benchmark never holds the whole stream in memory,
    in large record batches (100 ms linger): tansu's in-memory fetches slow down with the number
    of batches a partition holds (with 5 ms batches, a 10M-record topic was read at a few
    thousand records a second).
    """
    from streamml.benchmarks.kafka_bench import generate_events, produce_events

    t0 = time.perf_counter()
    done = 0
    while done < events:
        n = min(chunk, events - done)
        start_ms = 1_700_000_000_000 + 10 * done  # event time goes on from the last chunk
        values = list(generate_events(n, accounts=accounts, seed=seed + done, start_ms=start_ms))
        keys = [v[len(b'{"account":"') : v.index(b'",')] for v in values]
        produce_events(
            bootstrap, topic, values, partitions, processes=processes, keys=keys, linger_ms=100
        )
        done += n
        print(f"produced {done:,} / {events:,}", file=sys.stderr)
    return time.perf_counter() - t0


def soak_flow(
    bootstrap: str,
    topic: str,
    records: int,
    work: Path,
    *,
    marks: Sequence[int],
    window: int | None = None,
    state_memory_mb: int | None = None,
    history: bool = False,
) -> SoakResult:
    """Run the error-count flow over `topic` to its end; report its RSS at each mark of records.

    The RSS of the flow process is sampled about ten times a second with the count of records
    read; a mark's figure is the median of the samples taken while the flow read the `window`
    records up to it (default: 5% of `records`), or the last sample before the mark when the
    flow read that window between two samples. Raises `RuntimeError` when the flow fails and
    `AssertionError` when a record is missing.
    """
    from streamml.dataflows.environment import KAFKA_PREFIX
    from streamml.dataflows.error_count import ErrorCountConfig, SourceConfig, prepare_state

    from streamml.runner import process_memory, run_flow_processes

    state = work / "state-soak"
    shutil.rmtree(state, ignore_errors=True)
    extra: dict[str, Any] = {}
    if state_memory_mb is not None:
        extra["state_memory_bytes"] = state_memory_mb * MiB
    config = ErrorCountConfig(
        source=SourceConfig(kind="kafka"),
        state_dir=state,
        history_dir=state / "history" if history else None,
        stats_path=work / "stats-soak.json",
        kafka_env=(
            (KAFKA_PREFIX + "BROKERS", bootstrap),
            (KAFKA_PREFIX + "STOP_AT_END", "1"),
            (KAFKA_PREFIX + "TOPIC", topic),
        ),
        **extra,
    )
    prepare_state(config)
    samples: list[tuple[int, int]] = []
    pids: list[int] = []

    def sample(counters: dict[str, Any], elapsed: float) -> None:
        if not pids:
            pids.extend(_worker_pids())
        rss = sum(process_memory(p) for p in pids)
        if rss:
            samples.append((int(counters.get("read", 0)), rss))

    t0 = time.perf_counter()
    result = run_flow_processes(
        "streamml.dataflows.error_count:flow",
        config.to_env(),
        stats_path=config.stats_path,
        progress=sample,
    )
    seconds = time.perf_counter() - t0
    if result.returncode != 0:
        raise RuntimeError(f"the flow failed with exit code {result.returncode}")
    c = result.counters
    assert c.get("read") == records, (c, records)
    assert c.get("accepted", 0) + c.get("late", 0) + c.get("dead", 0) == records, c
    span = window or max(1, records // 20)
    taken = {}
    for mark in marks:
        near = [rss for read, rss in samples if mark - span < read <= mark]
        if not near:
            # A fast run can read the whole window between two samples: take the last one
            # before the mark, as close to it as the sampling allows.
            before = [(read, rss) for read, rss in samples if read <= mark]
            near = [max(before)[1]] if before else []
        if near:
            taken[mark] = int(statistics.median(near))
        else:
            print(f"no RSS sample before {mark} records", file=sys.stderr)
    return SoakResult(records, taken, result.peak_rss_bytes, seconds, dict(c), tuple(samples))


def run_soak(args: argparse.Namespace) -> dict[str, Any]:
    """Fill a topic (unless `--topic` names a filled one) and soak the flow on it."""
    from streamml.operators.kafka import ensure_topic

    from streamml.broker import start_broker

    out = Path(args.data_dir)
    out.mkdir(parents=True, exist_ok=True)
    broker = None if args.brokers else start_broker()
    bootstrap = args.brokers or broker.bootstrap  # type: ignore[union-attr]
    try:
        produce_s = 0.0
        topic = args.topic
        if topic is None:
            topic = f"soak-{args.events}-{time.time_ns():x}"
            ensure_topic([bootstrap], topic, args.partitions)
            produce_s = fill_topic(
                bootstrap,
                topic,
                args.events,
                accounts=args.accounts,
                partitions=args.partitions,
                seed=args.seed,
            )
        marks = [max(1, round(args.events * f)) for f in (0.1, 0.5, 1.0)]
        with tempfile.TemporaryDirectory(prefix="streamml-soak-", dir=out) as tmp:
            soak = soak_flow(
                bootstrap,
                topic,
                args.events,
                Path(tmp),
                marks=marks,
                state_memory_mb=args.state_memory_mb,
                history=not args.no_history,
            )
    finally:
        if broker is not None:
            broker.stop()
    return {
        "events": args.events,
        "accounts": args.accounts,
        "partitions": args.partitions,
        "topic": topic,
        "produce_s": produce_s,
        "flow_s": soak.flow_s,
        "events_per_s": args.events / soak.flow_s,
        "rss_mib": {str(k): v / MiB for k, v in sorted(soak.marks.items())},
        "peak_rss_mib": soak.peak_rss_bytes / MiB,
        "growth": soak.growth() if len(soak.marks) > 1 else None,
        "tolerance": args.tolerance,
        "history": not args.no_history,
    }


def register(bench_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `streamml bench kafka-soak`."""
    p = bench_sub.add_parser(
        "kafka-soak",
        help="RSS of the Kafka error-count flow at 10%%, 50%% and 100%% of a long run",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--events", type=int, default=10_000_000, help="records in the topic")
    p.add_argument("--accounts", type=int, default=100_000, help="accounts drawn uniformly")
    p.add_argument("--partitions", type=int, default=4, help="partitions of the topic")
    p.add_argument("--seed", type=int, default=7, help="generator seed")
    p.add_argument("--brokers", help="bootstrap HOST:PORT; unset: start a local tansu broker")
    p.add_argument("--topic", help="read this topic, already holding --events records")
    p.add_argument("--state-memory-mb", type=int, help="RocksDB memory budget of the flow process")
    p.add_argument(
        "--no-history",
        action="store_true",
        help="do not write the history store (by default written, as by `run error-count`)",
    )
    p.add_argument(
        "--tolerance", type=float, default=0.10, help="largest RSS growth from first to last mark"
    )
    p.add_argument("--data-dir", default="benchmarks/out", help="where the state is kept")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    import orjson

    from streamml.console import format_table

    if args.events < 10 or args.accounts < 1 or args.partitions < 1:
        print(
            "streamml bench kafka-soak: need --events >= 10, --accounts, --partitions >= 1",
            file=sys.stderr,
        )
        return 2
    report = run_soak(args)
    if args.json:
        print(orjson.dumps(report).decode())
    else:
        rows = [(f"{int(k):,}", f"{v:.0f}") for k, v in report["rss_mib"].items()]
        print(format_table(rows, headers=["records read", "RSS MiB"]))
        print(
            f"{report['events']:,} records in {report['flow_s']:.1f} s "
            f"({report['events_per_s']:,.0f}/s); peak RSS {report['peak_rss_mib']:.0f} MiB; "
            f"history store {'written' if report['history'] else 'not written (--no-history)'}"
        )
        if report["growth"] is not None:
            print(f"growth first to last mark: {report['growth']:+.1%}")
    growth = report["growth"]
    return 0 if growth is None or growth <= args.tolerance else 1
