"""Kafka throughput: fill a topic fast, then read it back bare and through `KafkaSource`.

Run against a fresh in-memory tansu broker (or `--bootstrap HOST:PORT`):

    python -m streamml.benchmarks.kafka_bench --events 500000 --partitions 3

Each reader checks inside the timed run that it saw every record exactly once.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing as mp
import random
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

__all__ = [
    "Rate",
    "bare_confluent_consume_rate",
    "bare_consume_rate",
    "generate_events",
    "key_partition",
    "key_partitions",
    "main",
    "produce_events",
    "read_events",
    "source_flow_rate",
]

MiB = 1024 * 1024


@dataclass(frozen=True)
class Rate:
    """Records handled in a timed run."""

    name: str
    records: int
    seconds: float

    @property
    def per_second(self) -> float:
        """Records per second."""
        return self.records / self.seconds if self.seconds > 0 else float("inf")

    def row(self) -> str:
        """One line of the summary table."""
        return f"{self.name:<34} {self.records:>10,} {self.seconds:>9.2f} {self.per_second:>12,.0f}"


def generate_events(
    n: int, accounts: int = 100_000, seed: int = 0, start_ms: int = 1_700_000_000_000
) -> Iterator[bytes]:
    """Yield `n` small signal-error events as JSON bytes (seeded, ts increasing by 10 ms).

    Each value is copied to a right-sized `bytes`: orjson (3.12 and later) returns small
    results in a buffer of about 4 KiB, so a list of a million of them would hold 4 GiB.
    """
    rng = random.Random(seed)
    codes = ("E1", "E2", "E3", "E7")
    for i in range(n):
        value = {
            "account": f"a{rng.randrange(accounts)}",
            "ts": start_ms + 10 * i,
            "code": codes[rng.randrange(4)],
        }
        yield bytes(memoryview(orjson.dumps(value)))


def read_events(path: str | Path) -> Iterator[bytes]:
    """Yield events from a file: JSON lines as they are, CSV rows (with a header) as JSON."""
    p = Path(path)
    if p.suffix.lower() == ".csv":
        with p.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                ev: dict[str, object] = dict(row)
                ts = row.get("ts", "")
                if ts.isdigit():
                    ev["ts"] = int(ts)
                yield orjson.dumps(ev)
    else:
        with p.open("rb") as f:
            for line in f:
                line = line.rstrip(b"\r\n")
                if line:
                    yield line


def _producer(bootstrap: str, linger_ms: int, batch_size: int, compression: str | None):
    return KafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=linger_ms,
        batch_size=batch_size,
        compression_type=compression,
        max_request_size=16 * MiB,
        metrics_enabled=False,
    )


_ProduceJob = tuple[
    str, str, list[bytes], list[int], int, int, str | None, list[bytes] | None, list[int] | None
]


def _produce_worker(args: _ProduceJob) -> int:
    """Send one process's share: round-robin over `parts`, or keyed to the given partitions."""
    bootstrap, topic, values, parts, linger_ms, batch_size, compression, keys, targets = args
    producer = _producer(bootstrap, linger_ms, batch_size, compression)
    send = producer.send
    if keys is not None and targets is not None:
        for k, v, p in zip(keys, values, targets, strict=True):
            send(topic, key=k, value=v, partition=p)
    else:
        n = len(parts)
        for i, v in enumerate(values):
            send(topic, value=v, partition=parts[i % n])
    producer.flush()
    producer.close()
    return len(values)


def key_partition(key: bytes, partitions: int) -> int:
    """Return the partition Kafka's default partitioner picks for `key` (murmur2, as in Java)."""
    from kafka.partitioner.default import murmur2

    return (murmur2(key) & 0x7FFFFFFF) % partitions


def key_partitions(keys: Sequence[bytes], partitions: int) -> list[int]:
    """Return `key_partition` of every key, hashing each distinct key once."""
    cache: dict[bytes, int] = {}
    out = []
    for k in keys:
        p = cache.get(k)
        if p is None:
            p = cache[k] = key_partition(k, partitions)
        out.append(p)
    return out


def produce_events(
    bootstrap: str,
    topic: str,
    events: Iterable[bytes] | str | Path,
    partitions: int = 3,
    *,
    processes: int = 1,
    linger_ms: int = 5,
    batch_size: int = 1 * MiB,
    compression_type: str | None = None,
    keys: Sequence[bytes] | None = None,
) -> Rate:
    """Fill `topic` (created with `partitions` if missing) with `events`.

    `events` is an iterable of raw values or a `.csv` / `.jsonl` path. Without `keys` the
    records go round-robin over the partitions; with `keys` (one per event) each record is
    keyed and sent to `key_partition(key)`, so every key's records keep their order in one
    partition. With `processes > 1` the partitions are split among that many producer
    processes. Returns the produce rate (timed from the first send to the last acknowledgement).
    """
    from streamml.operators.kafka import ensure_topic

    partitions = ensure_topic([bootstrap], topic, partitions)
    values = list(read_events(events) if isinstance(events, str | Path) else events)
    if keys is not None and len(keys) != len(values):
        raise ValueError(
            f"produce_events: {len(keys)} keys for {len(values)} events; expected one each"
        )
    targets = key_partitions(keys, partitions) if keys is not None else None
    procs = max(1, min(processes, partitions))
    how = "produce keyed" if keys is not None else "produce"
    if procs == 1:
        parts = list(range(partitions))
        job = (
            bootstrap,
            topic,
            values,
            parts,
            linger_ms,
            batch_size,
            compression_type,
            None if keys is None else list(keys),
            targets,
        )
        t0 = time.perf_counter()
        _produce_worker(job)
        return Rate(f"{how} (kafka-python, 1 proc)", len(values), time.perf_counter() - t0)
    groups = [list(range(partitions))[k::procs] for k in range(procs)]
    owner = {p: k for k, g in enumerate(groups) for p in g}
    # hand each process the records of its partitions, in their order
    chunks: list[list[bytes]] = [[] for _ in range(procs)]
    key_chunks: list[list[bytes]] = [[] for _ in range(procs)]
    target_chunks: list[list[int]] = [[] for _ in range(procs)]
    for i, v in enumerate(values):
        p = targets[i] if targets is not None else i % partitions
        k = owner[p]
        chunks[k].append(v)
        if keys is not None:
            key_chunks[k].append(keys[i])
            target_chunks[k].append(p)
    jobs: list[_ProduceJob] = [
        (
            bootstrap,
            topic,
            chunks[k],
            groups[k],
            linger_ms,
            batch_size,
            compression_type,
            key_chunks[k] if keys is not None else None,
            target_chunks[k] if keys is not None else None,
        )
        for k in range(procs)
    ]
    with mp.get_context("spawn").Pool(procs) as pool:
        t0 = time.perf_counter()
        done = sum(pool.map(_produce_worker, jobs))
        seconds = time.perf_counter() - t0
    assert done == len(values), (done, len(values))
    return Rate(f"{how} (kafka-python, {procs} procs)", done, seconds)


def bare_consume_rate(
    bootstrap: str,
    topic: str,
    expected: int,
    *,
    fetch_max_bytes: int = 64 * MiB,
    max_partition_fetch_bytes: int = 16 * MiB,
    max_records: int = 10_000,
) -> Rate:
    """Time a bare kafka-python consumer (assigned partitions, large fetches) reading `expected`.

    kafka-python parses every record; the loop asserts that each poll's first offset per
    partition follows the last one of the poll before (from 0), and the total equals `expected`.
    """
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_bytes=fetch_max_bytes,
        max_partition_fetch_bytes=max_partition_fetch_bytes,
        fetch_max_wait_ms=100,
        max_poll_records=max_records,
        receive_buffer_bytes=4 * MiB,
        metrics_enabled=False,
    )
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(tps)
    consumer.seek_to_beginning()
    nxt = {tp: 0 for tp in tps}
    seen = 0
    t0 = time.perf_counter()
    deadline = time.monotonic() + 600
    while seen < expected and time.monotonic() < deadline:
        for tp, recs in consumer.poll(timeout_ms=100, max_records=max_records).items():
            assert recs[0].offset == nxt[tp], (tp, recs[0].offset, nxt[tp])
            nxt[tp] = recs[-1].offset + 1
            seen += len(recs)
    seconds = time.perf_counter() - t0
    consumer.close()
    assert seen == expected, f"bare consumer saw {seen} records, expected {expected}"
    return Rate("bare kafka-python consumer", seen, seconds)


def bare_confluent_consume_rate(
    bootstrap: str,
    topic: str,
    expected: int,
    *,
    fetch_max_bytes: int = 64 * MiB,
    max_partition_fetch_bytes: int = 16 * MiB,
    queued_max_kbytes: int = 64 * 1024,
    chunk: int = 2_000,
) -> Rate:
    """Time a bare confluent-kafka consumer (assigned partitions, large fetches) reading `expected`.

    The same settings as the confluent reader of `KafkaSource`, messages taken `chunk` at a time
    as it does; each record's value is taken and every partition's offsets are checked
    contiguous from 0.
    """
    from confluent_kafka import Consumer
    from confluent_kafka import TopicPartition as CTopicPartition

    parts = _partitions(bootstrap, topic)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "streamml-bench-bare",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "enable.partition.eof": False,
            "fetch.max.bytes": fetch_max_bytes,
            "max.partition.fetch.bytes": max_partition_fetch_bytes,
            "receive.message.max.bytes": fetch_max_bytes + MiB,
            "fetch.wait.max.ms": 100,
            "queued.max.messages.kbytes": queued_max_kbytes,
            "queued.min.messages": 100_000,
            "log_level": 4,
        }
    )
    consumer.assign([CTopicPartition(topic, p, 0) for p in parts])
    nxt = dict.fromkeys(parts, 0)
    seen = 0
    t0 = time.perf_counter()
    deadline = time.monotonic() + 600
    while seen < expected and time.monotonic() < deadline:
        msgs = consumer.consume(chunk, 0.1)
        for m in msgs:
            if m.error() is not None:
                raise RuntimeError(f"bare confluent consumer: {m.error()}")
            p, o = m.partition(), m.offset()
            assert o == nxt[p], (p, o, nxt[p])
            nxt[p] = o + 1
        values = [m.value() for m in msgs]
        seen += len(values)
    seconds = time.perf_counter() - t0
    consumer.close()
    assert seen == expected, f"bare confluent consumer saw {seen} records, expected {expected}"
    return Rate("bare confluent-kafka consumer", seen, seconds)


def _partitions(bootstrap: str, topic: str) -> list[int]:
    from streamml.operators.kafka import topic_partitions

    return topic_partitions([bootstrap], topic)


def source_flow_rate(
    bootstrap: str,
    topic: str,
    expected: int,
    *,
    batch_size: int = 0,
    poll_timeout_ms: int = 0,
    client: str = "kafka-python",
) -> Rate:
    """Time a Bytewax flow that reads `topic` with `KafkaSource` (stop at end) and counts records.

    The time includes building the flow's partitions (one consumer each). Asserts the count.
    """
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, run_main
    from streamml.operators.kafka import KafkaSource, KafkaSourceConfig

    cfg = KafkaSourceConfig(
        brokers=[bootstrap],
        topic=topic,
        start="earliest",
        stop_at_end=True,
        batch_size=batch_size,
        poll_timeout_ms=poll_timeout_ms,
        client=client,  # type: ignore[arg-type]
    )
    counts: list[int] = []
    flow = Dataflow("kafka_source_bench")
    batches = op.input("in", flow, KafkaSource(cfg))
    op.output("out", op.map("count", batches, lambda rl: len(rl.values)), TestingSink(counts))
    t0 = time.perf_counter()
    run_main(flow, epoch_interval=timedelta(seconds=1))
    seconds = time.perf_counter() - t0
    seen = sum(counts)
    assert seen == expected, f"KafkaSource flow saw {seen} records, expected {expected}"
    name = f"KafkaSource in bytewax ({client}, poll {poll_timeout_ms} ms)"
    return Rate(name, seen, seconds)


def main(argv: Sequence[str] | None = None) -> int:
    """Fill a topic and print produce, bare-consume and KafkaSource rates."""
    ap = argparse.ArgumentParser(
        prog="python -m streamml.benchmarks.kafka_bench", description=__doc__
    )
    ap.add_argument("--bootstrap", help="use this broker instead of starting tansu")
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--input", help="a .csv or .jsonl file of events instead of generated ones")
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--produce-processes", type=int, default=1)
    ap.add_argument("--linger-ms", type=int, default=5)
    ap.add_argument("--batch-bytes", type=int, default=1 * MiB)
    ap.add_argument("--compression", choices=["gzip", "snappy", "lz4", "zstd"], default=None)
    ap.add_argument("--topic", default=None)
    args = ap.parse_args(argv)

    from streamml.broker import start_broker

    broker = None if args.bootstrap else start_broker()
    bootstrap = args.bootstrap or broker.bootstrap  # type: ignore[union-attr]
    topic = args.topic or f"bench-{int(time.time())}"
    try:
        events: Iterable[bytes] | str = (
            args.input if args.input else generate_events(args.events, seed=42)
        )
        print(f"broker {bootstrap}, topic {topic}, {args.partitions} partitions", file=sys.stderr)
        rates = [
            produce_events(
                bootstrap,
                topic,
                events,
                args.partitions,
                processes=args.produce_processes,
                linger_ms=args.linger_ms,
                batch_size=args.batch_bytes,
                compression_type=args.compression,
            )
        ]
        n = rates[0].records
        rates.append(bare_consume_rate(bootstrap, topic, n))
        rates.append(source_flow_rate(bootstrap, topic, n))
        print(f"{'step':<34} {'records':>10} {'seconds':>9} {'records/s':>12}")
        for r in rates:
            print(r.row())
    finally:
        if broker is not None:
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
