"""The error-count benchmark on a Kafka topic (``streamml bench error-count --source kafka``).

The generated events of the file run with the same arguments are produced as JSON values keyed by
account into a topic of ``--partitions`` partitions, then, ``--runs`` times in turn, a bare
kafka-python consumer reads the topic for reference and the flow reads it with
``--stop-at-end``; each run is checked against a brute-force count of each partition's rows (see
`streamml.benchmarks.error_count`).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from streamml.benchmarks.error_count import (
    BenchRun,
    bench_layout,
    check_tables,
    input_files,
    read_table,
    run_rows,
    runs_of,
    store_settings,
    timed_run,
)
from streamml.dataflows.environment import KAFKA_PREFIX
from streamml.dataflows.error_count import ErrorCountConfig, SourceConfig

__all__ = ["kafka_input", "run_kafka_bench", "run_kafka_once"]


def run_kafka_once(
    bootstrap: str,
    topic: str,
    processes: int,
    work: Path,
    history: bool,
    client: str = "kafka-python",
    routing: str = "exchange",
    fast_records: bool = True,
    store: dict[str, object] | None = None,
) -> BenchRun:
    """Run the flow over `topic` from its start to its end offsets with a fresh state dir.

    `client` is the Kafka client the flow reads with (`--kafka-client`); `fast_records` is the
    source's `KafkaSourceConfig.fast_records` (kafka-python: aiokafka's C record parser); `store`
    as `run_once`.
    """
    state = work / f"state-kafka-p{processes}"
    shutil.rmtree(state, ignore_errors=True)
    config = ErrorCountConfig(
        source=SourceConfig(kind="kafka"),
        state_dir=state,
        layout=bench_layout(routing),
        routing=routing,
        history_dir=state / "history" if history else None,
        stats_path=work / f"stats-kafka-p{processes}.json",
        kafka_env=(
            (KAFKA_PREFIX + "BROKERS", bootstrap),
            (KAFKA_PREFIX + "CLIENT", client),
            (KAFKA_PREFIX + "FAST_RECORDS", "1" if fast_records else "0"),
            (KAFKA_PREFIX + "STOP_AT_END", "1"),
            (KAFKA_PREFIX + "TOPIC", topic),
        ),
        **(store or {}),  # type: ignore[arg-type]
    )
    return timed_run(config, processes)


def _kafka_values(table: pa.Table) -> list[bytes]:
    """Return each row of `table` as a JSON event value."""
    joined = pc.binary_join_element_wise(
        '{"account": "',
        table.column("account"),
        '", "ts": ',
        table.column("ts").cast(pa.string()),
        ', "code": "',
        table.column("code"),
        '"}',
        "",
    )
    return [v.encode() for v in joined.to_pylist()]


def kafka_input(
    out: Path, args: argparse.Namespace
) -> tuple[list[bytes], list[bytes], list[pa.Table]]:
    """Return the generated events of a Kafka run: keys, JSON values and each partition's rows.

    The events are those of the one-file run with the same `args` (events, accounts, seed,
    zipf); each partition's rows are in file order, the order keyed producing keeps them in.
    """
    from streamml.benchmarks.kafka_bench import key_partitions

    paths = input_files(out, args.events, args.accounts, args.seed, 1, args.zipf)
    table = read_table(paths[0])
    keys = [a.encode() for a in table.column("account").to_pylist()]
    values = _kafka_values(table)
    targets = np.asarray(key_partitions(keys, args.partitions))
    tables = [table.filter(pa.array(targets == k)) for k in range(args.partitions)]
    return keys, values, tables


def run_kafka_bench(args: argparse.Namespace) -> dict[str, object]:
    """Produce the generated events keyed by account, then time a bare consumer and the flow."""
    from streamml.benchmarks.kafka_bench import bare_consume_rate, produce_events

    from streamml.broker import start_broker

    out = Path(args.data_dir)
    out.mkdir(parents=True, exist_ok=True)
    procs = sorted({int(p) for p in str(args.processes).split(",")})
    routing = getattr(args, "routing", "exchange")
    client = getattr(args, "kafka_client", "kafka-python")
    keys, values, tables = kafka_input(out, args)
    partitions = args.partitions
    broker = None if args.brokers else start_broker()
    bootstrap = args.brokers or broker.bootstrap  # type: ignore[union-attr]
    topic = f"bench-errors-{args.events}-{args.accounts}-p{partitions}-{time.time_ns():x}"
    history = not args.no_history
    repeats = runs_of(args)
    runs: dict[int, list[BenchRun]] = {p: [] for p in procs}
    bares = []
    try:
        print(f"broker {bootstrap}, topic {topic}, {partitions} partitions", file=sys.stderr)
        produced = produce_events(
            bootstrap,
            topic,
            values,
            partitions,
            processes=args.produce_processes,
            keys=keys,
        )
        del values, keys
        with tempfile.TemporaryDirectory(prefix="streamml-bench-", dir=out) as tmp:
            work = Path(tmp)
            # rounds of the bare consumer and each process count in turn, on the same topic
            for i in range(repeats):
                bares.append(bare_consume_rate(bootstrap, topic, produced.records))
                for p in procs:
                    print(f"run {i + 1}/{repeats}, {p} process(es)", file=sys.stderr)
                    run = run_kafka_once(
                        bootstrap,
                        topic,
                        p,
                        work,
                        history,
                        client=client,
                        routing=routing,
                        store=store_settings(args),
                    )
                    runs[p].append(run)
                    c = orjson.loads((work / f"stats-kafka-p{p}.json").read_bytes())["counters"]
                    assert c.get("read", 0) == produced.records, (c, produced.records)
                    if not args.no_check:
                        check_tables(tables, work / f"state-kafka-p{p}", c, args.check_accounts)
    finally:
        if broker is not None:
            broker.stop()
    rows = [run_rows(runs[p]) for p in procs]
    bare_rates = [b.per_second for b in bares]
    bare_median = statistics.median(bare_rates)
    report: dict[str, object] = {
        "source": "kafka",
        "events": args.events,
        "accounts": args.accounts,
        "zipf": args.zipf,
        "partitions": partitions,
        "history": history,
        "routing": routing,
        "kafka_client": client,
        "produce": {
            "name": produced.name,
            "records": produced.records,
            "seconds": produced.seconds,
            "per_s": produced.per_second,
        },
        "bare_consumer": {
            "records": bares[0].records,
            "runs": len(bares),
            "seconds": statistics.median(b.seconds for b in bares),
            "per_s": bare_median,
            "per_s_spread": [min(bare_rates), max(bare_rates)],
        },
        "runs": rows,
        "ratio_vs_bare_consumer": [
            float(r["events_per_s_per_process"]) / bare_median  # type: ignore[arg-type]
            for r in rows
        ],
    }
    if len(rows) > 1:
        report["scaling"] = float(rows[-1]["events_per_s"]) / float(rows[0]["events_per_s"])  # type: ignore[arg-type]
    return report
