"""`streamml bench kafka`: the error-count flow on each Kafka client vs a bare consumer of each.

A local tansu broker is started (or ``--brokers`` is used) and the generated signal-error events
(the same as ``bench error-count``: ``--events``, ``--accounts``, ``--seed``, Zipf-drawn accounts)
are produced once, keyed by account, into a topic of ``--partitions`` partitions. Then, ``--runs``
times, for each client of ``--kafka-client`` in turn, on the same topic:

- a bare consumer of that client reads the whole topic (one consumer, every partition assigned,
  the source's large fetch settings; the client parses every record, the confluent consumer
  takes each value and checks every offset, the kafka-python one checks that each poll's first
  offset follows the last of the poll before);
- the error-count flow (`streamml run error-count --source kafka --stop-at-end`, one process,
  with kafka-python parsing fetched records by aiokafka's C parser unless
  ``--kafka-python-records kafka-python``,
  fresh RocksDB state and online store, and the history store unless ``--no-history``, as
  `streamml run error-count` by default) reads it end to
  end with that client; its state is checked against a brute-force count of sampled accounts
  and its read counter against the records produced.

Each figure is the median of the runs with its spread (min-max); the flow's rate is over its own
time, as in ``bench error-count``: from the moment the worker has built the flow (process
start-up excluded) to its end, so connecting to the broker and finding each partition's end
count, which the bare consumer's time leaves out.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import orjson

from streamml.console import format_table, human

__all__ = ["register", "run_clients_bench"]

CLIENTS = ("kafka-python", "confluent")


def _clients(value: str) -> list[str]:
    out = [c.strip() for c in value.split(",") if c.strip()]
    bad = [c for c in out if c not in CLIENTS]
    if bad or not out:
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of {', '.join(CLIENTS)}, got {value!r}"
        )
    return out


def _spread(values: Sequence[float]) -> dict[str, object]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": list(values),
    }


def run_clients_bench(args: argparse.Namespace) -> dict[str, object]:
    """Produce once; time bare consumers and the flow per client, `args.runs` times each."""
    from streamml.benchmarks.error_count import check_tables
    from streamml.benchmarks.error_count_kafka import kafka_input, run_kafka_once
    from streamml.benchmarks.kafka_bench import (
        bare_confluent_consume_rate,
        bare_consume_rate,
        produce_events,
    )

    from streamml.broker import start_broker

    out = Path(args.data_dir)
    out.mkdir(parents=True, exist_ok=True)
    keys, values, tables = kafka_input(out, args)
    partitions = args.partitions
    broker = None if args.brokers else start_broker()
    bootstrap = args.brokers or broker.bootstrap  # type: ignore[union-attr]
    topic = f"bench-clients-{args.events}-p{partitions}-{time.time_ns():x}"
    bare: dict[str, list[float]] = {c: [] for c in args.kafka_client}
    flow: dict[str, list[float]] = {c: [] for c in args.kafka_client}
    cpu: dict[str, list[float]] = {c: [] for c in args.kafka_client}
    rss: dict[str, list[float]] = {c: [] for c in args.kafka_client}
    try:
        print(f"broker {bootstrap}, topic {topic}, {partitions} partitions", file=sys.stderr)
        produced = produce_events(
            bootstrap, topic, values, partitions, processes=args.produce_processes, keys=keys
        )
        del values, keys
        n = produced.records
        with tempfile.TemporaryDirectory(prefix="streamml-bench-", dir=out) as tmp:
            work = Path(tmp)
            for i in range(args.runs):
                for client in args.kafka_client:
                    bare_read = bare_consume_rate
                    if client == "confluent":
                        bare_read = bare_confluent_consume_rate
                    rate = bare_read(bootstrap, topic, n)
                    bare[client].append(rate.per_second)
                    run = run_kafka_once(
                        bootstrap,
                        topic,
                        1,
                        work,
                        not args.no_history,
                        client=client,
                        fast_records=args.kafka_python_records == "fast",
                    )
                    c = orjson.loads((work / "stats-kafka-p1.json").read_bytes())["counters"]
                    assert c.get("read", 0) == n, (c, n)
                    if not args.no_check:
                        check_tables(tables, work / "state-kafka-p1", c, args.check_accounts)
                    flow[client].append(run.events_per_s)
                    cpu[client].append(run.cpu_s)
                    rss[client].append(run.peak_rss_bytes / 2**20)
                    print(
                        f"run {i + 1}/{args.runs} {client}: bare {human(rate.per_second)}/s, "
                        f"flow {human(run.events_per_s)}/s",
                        file=sys.stderr,
                    )
    finally:
        if broker is not None:
            broker.stop()
    report: dict[str, object] = {
        "events": args.events,
        "accounts": args.accounts,
        "zipf": args.zipf,
        "partitions": partitions,
        "runs": args.runs,
        "history": not args.no_history,
        "kafka_python_records": args.kafka_python_records,
        "produce": {"name": produced.name, "records": n, "per_s": produced.per_second},
        "clients": {
            c: {
                "bare_consumer_per_s": _spread(bare[c]),
                "flow_events_per_s": _spread(flow[c]),
                "flow_cpu_s": _spread(cpu[c]),
                "flow_peak_rss_mib": _spread(rss[c]),
            }
            for c in args.kafka_client
        },
    }
    medians = {c: statistics.median(flow[c]) for c in args.kafka_client}
    if "kafka-python" in bare:
        base = statistics.median(bare["kafka-python"])
        report["flow_vs_bare_kafka_python"] = {c: m / base for c, m in medians.items()}
    return report


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults and keep the description's paragraphs."""


def register(bench_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `streamml bench kafka`."""
    from streamml.benchmarks.error_count import DEFAULT_ZIPF

    p = bench_sub.add_parser(
        "kafka",
        help="error-count flow on each Kafka client vs a bare consumer of each, same topic",
        description=__doc__,
        formatter_class=_HelpFormatter,
    )
    p.add_argument(
        "--kafka-client",
        type=_clients,
        default=list(CLIENTS),
        metavar="CLIENT[,CLIENT]",
        help="clients to time, in this order each run: kafka-python, confluent or both",
    )
    p.add_argument("--events", type=int, default=2_000_000, help="events to produce")
    p.add_argument("--accounts", type=int, default=100_000, help="size of the account population")
    p.add_argument("--seed", type=int, default=7, help="generator seed")
    p.add_argument("--zipf", type=float, default=DEFAULT_ZIPF, help="account popularity exponent")
    p.add_argument("--partitions", type=int, default=3, help="partitions of the topic")
    p.add_argument("--runs", type=int, default=3, help="timed runs of each reader (median, spread)")
    p.add_argument(
        "--no-history",
        action="store_true",
        help="do not write the history store (by default written, as by `run error-count`)",
    )
    p.add_argument(
        "--kafka-python-records",
        choices=("fast", "kafka-python"),
        default="fast",
        help="how the kafka-python flow parses fetched records: aiokafka's C parser (the "
        "source's default, fast_records) or kafka-python's own; the bare consumer always uses "
        "kafka-python's own",
    )
    p.add_argument("--no-check", action="store_true", help="skip the state check (not the count)")
    p.add_argument("--check-accounts", type=int, default=20, help="accounts checked per partition")
    p.add_argument("--brokers", help="bootstrap HOST:PORT; unset: start a local tansu broker")
    p.add_argument("--produce-processes", type=int, default=2, help="producer processes")
    p.add_argument(
        "--data-dir", default="benchmarks/out", help="where the generated input and state go"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    if args.events < 1 or args.runs < 1 or args.partitions < 1 or args.produce_processes < 1:
        print(
            "streamml bench kafka: --events, --runs, --partitions and --produce-processes "
            "must be >= 1",
            file=sys.stderr,
        )
        return 2
    report = run_clients_bench(args)
    if args.json:
        print(orjson.dumps(report).decode())
        return 0
    prod: dict = report["produce"]  # type: ignore[assignment]
    print(f"{prod['name']}: {prod['records']:,} records, {human(prod['per_s'])}/s")
    rows = []
    clients: dict = report["clients"]  # type: ignore[assignment]
    for c, r in clients.items():
        for what, key in (("bare consumer", "bare_consumer_per_s"), ("flow", "flow_events_per_s")):
            s = r[key]
            rows.append((c, what, human(s["median"]), human(s["min"]), human(s["max"])))
    print(f"median of {report['runs']} runs, records/s")
    print(format_table(rows, headers=["client", "reader", "median/s", "min/s", "max/s"]))
    for c, ratio in report.get("flow_vs_bare_kafka_python", {}).items():  # type: ignore[attr-defined]
        print(f"flow on {c} = {ratio:.2f}x the bare kafka-python consumer (medians)")
    return 0
