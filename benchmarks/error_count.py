"""Throughput benchmark of the error-count flow on a CSV file or a Kafka topic.

File source (the default): the flow reads a generated CSV file with RocksDB state and the online
store, optionally compared with Flink SQL on the same file.

Kafka source (``--source kafka``): a local tansu broker is started (or ``--brokers`` is used), the
same generated events are produced as JSON values keyed by account into a topic of
``--partitions`` partitions (Kafka's default key partitioner, so each account's events keep their
order in one partition), a bare kafka-python consumer reads the topic once for reference, then
the flow reads it with ``--stop-at-end``.

Routing (``--routing``): ``exchange`` (the default) keys shard batches ``shard-NNN`` and Bytewax
moves each to the process it hashes the key to; ``partition`` creates the state dir with the
murmur2 shard hash (Kafka's default key partitioner) and keeps every shard in the process that
reads its input partition (the files are then generated with each account in the file its
murmur2 picks, as ``streamml generate --files N --by-key`` does). Each run reports how many
shard batches (and events) crossed processes. ``--repeat N`` runs each process count N times
and reports the median run with the spread (lowest and highest events/s).

The figures are events per second (from the flow's first to its last record, and including
process start-up), CPU seconds and peak RSS of the worker processes, and the disk size of the
state directory. Correctness is checked on the same run: every row is accounted for, and the
final values of sampled accounts equal a brute-force count over the file (for Kafka: over each
partition in produce order).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from streamml.dataflows.environment import KAFKA_PREFIX
from streamml.dataflows.error_count import ErrorCountConfig, SourceConfig
from streamml.operators.sources import GeneratorConfig
from streamml.state.layout import StateLayout
from streamml.state.online import OnlineStore
from streamml.state.rolling_store import RollingStateStore

from streamml.console import Progress, format_table, human
from streamml.generate_cli import write_events
from streamml.run_cli import run_error_count

__all__ = [
    "BenchRun",
    "count_accounts",
    "dir_bytes",
    "register",
    "run_bench",
    "run_kafka_bench",
    "run_kafka_once",
]

WINDOW = 24
BUCKET_MS = 3_600_000
DEFAULT_ZIPF = GeneratorConfig().zipf


@dataclass(frozen=True, slots=True)
class BenchRun:
    """One timed run of the flow."""

    processes: int
    events: int
    flow_s: float
    wall_s: float
    cpu_s: float
    peak_rss_bytes: int
    alerts: int
    state_bytes: int = 0
    peak_rss_sum_bytes: int = 0
    crossed_batches: int = 0
    crossed_events: int = 0

    @property
    def events_per_s(self) -> float:
        """Events per second from the flow's start to its end (process start-up excluded)."""
        return self.events / max(self.flow_s, 1e-9)


def _input_files(
    out: Path,
    events: int,
    accounts: int,
    seed: int,
    files: int,
    zipf: float = DEFAULT_ZIPF,
    by_key: bool = False,
) -> list[Path]:
    tag = f"errors-{events}-{accounts}-{seed}-{files}"
    if zipf != DEFAULT_ZIPF:
        tag += f"-zipf{zipf:g}"
    if by_key and files > 1:
        tag += "-bykey"
    target = out / tag / "errors.csv"
    done = out / tag / "done"
    if done.exists():
        return [Path(p) for p in done.read_text().split()]
    # Each generator batch draws from the whole account population, so with millions of
    # accounts larger batches keep generation time reasonable.
    batch = max(GeneratorConfig().batch_size, accounts // 20)
    paths = write_events(
        target,
        GeneratorConfig(events=events, accounts=accounts, seed=seed, zipf=zipf, batch_size=batch),
        fmt="csv",
        files=files,
        progress=Progress(),
        by_key=by_key,
    )
    done.write_text("\n".join(str(p) for p in paths))
    return paths


def _read_table(path: Path) -> pa.Table:
    return pacsv.read_csv(
        path,
        convert_options=pacsv.ConvertOptions(
            column_types={"account": pa.string(), "ts": pa.int64(), "code": pa.string()}
        ),
    )


def dir_bytes(path: Path) -> int:
    """Return the total size of the files under `path`."""
    total = 0
    for root, _dirs, names in os.walk(path):
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                total += (Path(root) / name).stat().st_size
    return total


def count_accounts(state_dir: Path) -> int:
    """Return the number of accounts stored in the state of `state_dir` (every shard scanned)."""
    layout = StateLayout.read(state_dir)
    if layout is None:
        raise FileNotFoundError(f"{state_dir} holds no feature state")
    total = 0
    for shard in range(layout.shards):
        path = StateLayout.shard_dir(state_dir, shard)
        if not (path / "CURRENT").exists():
            continue
        store = RollingStateStore(
            path, feature=layout.feature_id, window=layout.window_buckets, read_only=True
        )
        try:
            total += sum(1 for _ in store.iter_records())
        finally:
            store.close()
    return total


def _check(paths: list[Path], state_dir: Path, counters: dict[str, int], sample: int) -> None:
    """Check every row is accounted for and sampled accounts equal a brute-force count."""
    _check_tables([_read_table(p) for p in paths], state_dir, counters, sample)


def _check_tables(
    tables: list[pa.Table], state_dir: Path, counters: dict[str, int], sample: int
) -> None:
    """Check against `tables`, each one input partition (`account`, `ts`) in its read order."""
    rows = sum(t.num_rows for t in tables)
    assert counters.get("read", 0) == rows, (counters, rows)
    assert counters["accepted"] + counters["late"] + counters.get("dead", 0) == rows, counters
    store = OnlineStore(state_dir)
    rng = np.random.default_rng(1)
    for t in tables:
        accounts = t.column("account").to_numpy(zero_copy_only=False)
        ts = t.column("ts").to_numpy()
        picks = rng.choice(np.unique(accounts), min(sample, len(accounts)), replace=False)
        for account in picks:
            events = ts[accounts == account]
            buckets: list[int] = []
            m = -1
            for x in (events // BUCKET_MS).tolist():
                if x < m - (WINDOW - 1):
                    continue
                buckets.append(x)
                m = max(m, x)
            expected = sum(1 for x in buckets if x >= m - (WINDOW - 1))
            got = store.get(account, as_of=m * BUCKET_MS).value
            assert got == expected, (account, got, expected)
    store.close()


def _timed_run(config: ErrorCountConfig, processes: int, snapshot_interval_s: int = 10) -> BenchRun:
    """Run the flow of `config` and return its figures (from its stats file)."""
    result = run_error_count(
        config,
        processes=processes,
        recovery_dir=config.recovery_dir,
        snapshot_interval_s=snapshot_interval_s,
    )
    if result.returncode != 0:
        raise RuntimeError(f"the flow failed with exit code {result.returncode}")
    assert config.stats_path is not None
    body = orjson.loads(config.stats_path.read_bytes())
    return BenchRun(
        processes=processes,
        events=result.counters.get("read", 0),
        flow_s=body["updated_at"] - body["started_at"],
        wall_s=result.wall_s,
        cpu_s=result.cpu_s,
        peak_rss_bytes=result.peak_rss_bytes,
        alerts=result.counters.get("alerts", 0),
        state_bytes=dir_bytes(config.state_dir),
        peak_rss_sum_bytes=result.peak_rss_sum_bytes,
        crossed_batches=result.counters.get("crossed_batches", 0),
        crossed_events=result.counters.get("crossed_events", 0),
    )


def _layout(routing: str) -> StateLayout:
    return StateLayout(shard_hash="murmur2" if routing == "partition" else "crc32")


def run_once(
    paths: list[Path],
    processes: int,
    work: Path,
    history: bool,
    recovery: bool = False,
    routing: str = "exchange",
) -> BenchRun:
    """Run the flow over `paths` with a fresh state dir (and recovery dir); return its figures."""
    tag = f"p{processes}" + ("-recovery" if recovery else "")
    state = work / f"state-{tag}"
    shutil.rmtree(state, ignore_errors=True)
    recovery_dir = work / f"recovery-{tag}" if recovery else None
    if recovery_dir is not None:
        shutil.rmtree(recovery_dir, ignore_errors=True)
    config = ErrorCountConfig(
        source=SourceConfig(kind="file", paths=tuple(str(p) for p in paths)),
        state_dir=state,
        layout=_layout(routing),
        history_dir=state / "history" if history else None,
        stats_path=work / f"stats-{tag}.json",
        recovery_dir=recovery_dir,
        routing=routing,
    )
    return _timed_run(config, processes)


def run_kafka_once(
    bootstrap: str,
    topic: str,
    processes: int,
    work: Path,
    history: bool,
    client: str = "kafka-python",
    routing: str = "exchange",
) -> BenchRun:
    """Run the flow over `topic` from its start to its end offsets with a fresh state dir.

    `client` is the Kafka client the flow reads with (`--kafka-client`).
    """
    state = work / f"state-kafka-p{processes}"
    shutil.rmtree(state, ignore_errors=True)
    config = ErrorCountConfig(
        source=SourceConfig(kind="kafka"),
        state_dir=state,
        layout=_layout(routing),
        routing=routing,
        history_dir=state / "history" if history else None,
        stats_path=work / f"stats-kafka-p{processes}.json",
        kafka_env=(
            (KAFKA_PREFIX + "BROKERS", bootstrap),
            (KAFKA_PREFIX + "CLIENT", client),
            (KAFKA_PREFIX + "STOP_AT_END", "1"),
            (KAFKA_PREFIX + "TOPIC", topic),
        ),
    )
    return _timed_run(config, processes)


def _median_run(runs: list[BenchRun]) -> BenchRun:
    """Return the run of median events/s (the lower middle one of an even count)."""
    ordered = sorted(runs, key=lambda r: r.events_per_s)
    return ordered[(len(ordered) - 1) // 2]


def _run_row(r: BenchRun, repeats: list[BenchRun] | None = None) -> dict[str, object]:
    rates = sorted(x.events_per_s for x in repeats or [r])
    return {
        "processes": r.processes,
        "events_per_s": r.events_per_s,
        "events_per_s_runs": rates,
        "events_per_s_min": rates[0],
        "events_per_s_max": rates[-1],
        "peak_rss_sum_mib": r.peak_rss_sum_bytes / 2**20,
        "cpu_s_per_process": r.cpu_s / r.processes,
        "crossed_batches": r.crossed_batches,
        "crossed_events": r.crossed_events,
        "events_per_s_per_process": r.events_per_s / r.processes,
        "events_per_s_incl_startup": r.events / r.wall_s,
        "flow_s": r.flow_s,
        "wall_s": r.wall_s,
        "cpu_s": r.cpu_s,
        "peak_rss_mib": r.peak_rss_bytes / 2**20,
        "state_mib": r.state_bytes / 2**20,
        "alerts": r.alerts,
    }


def run_bench(args: argparse.Namespace) -> dict[str, object]:
    """Generate (or reuse) the input, run the flow per process count, compare with Flink."""
    if getattr(args, "source", "file") == "kafka":
        return run_kafka_bench(args)
    out = Path(args.data_dir)
    out.mkdir(parents=True, exist_ok=True)
    procs = sorted({int(p) for p in str(args.processes).split(",")})
    files = args.files or max(procs)
    zipf = getattr(args, "zipf", DEFAULT_ZIPF)
    routing = getattr(args, "routing", "exchange")
    repeat = max(1, getattr(args, "repeat", 1))
    by_key = routing == "partition"
    paths = _input_files(out, args.events, args.accounts, args.seed, files, zipf, by_key)
    runs = []
    repeats: dict[int, list[BenchRun]] = {p: [] for p in procs}
    stored: dict[int, int] = {}
    with tempfile.TemporaryDirectory(prefix="streamml-bench-", dir=out) as tmp:
        work = Path(tmp)
        # Process counts take turns, so a change of the machine's load falls on all of them.
        for _ in range(repeat):
            for p in procs:
                run = run_once(paths, p, work, args.history, routing=routing)
                repeats[p].append(run)
                if not args.no_check:
                    c = orjson.loads((work / f"stats-p{p}.json").read_bytes())["counters"]
                    _check(paths, work / f"state-p{p}", c, args.check_accounts)
                if getattr(args, "count_accounts", False):
                    stored[p] = count_accounts(work / f"state-p{p}")
        runs = [_median_run(repeats[p]) for p in procs]
    report: dict[str, object] = {
        "source": "file",
        "events": args.events,
        "accounts": args.accounts,
        "zipf": zipf,
        "files": files,
        "routing": routing,
        "repeat": repeat,
        "runs": [_run_row(r, repeats[r.processes]) for r in runs],
    }
    if stored:
        for row in report["runs"]:  # type: ignore[attr-defined]
            row["accounts_stored"] = stored[row["processes"]]
    if len(runs) > 1:
        report["scaling"] = runs[-1].events_per_s / runs[0].events_per_s
    if getattr(args, "recovery", False):
        with tempfile.TemporaryDirectory(prefix="streamml-bench-", dir=out) as tmp:
            plain = run_once(paths, procs[0], Path(tmp), args.history)
            with_recovery = run_once(paths, procs[0], Path(tmp), args.history, recovery=True)
        report["recovery"] = {
            "processes": procs[0],
            "events_per_s_without": plain.events_per_s,
            "events_per_s_with": with_recovery.events_per_s,
            "overhead": 1 - with_recovery.events_per_s / plain.events_per_s,
        }
    if args.flink and files == 1:
        try:
            from streamml.benchmarks.flink_baseline import flink_available, run_flink_sql
        except ImportError:
            flink_available = None
        if flink_available is not None and flink_available():
            fr = run_flink_sql(paths[0], threshold=2000, parallelism=1)
            report["flink"] = {
                "events_per_s": fr.events_per_s,
                "seconds_excluding_startup": fr.seconds_excluding_startup,
                "alert_windows": fr.alert_windows,
            }
            report["ratio_vs_flink"] = runs[0].events_per_s / fr.events_per_s
        else:
            report["flink"] = "not installed (make flink)"
    return report


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


def run_kafka_bench(args: argparse.Namespace) -> dict[str, object]:
    """Produce the generated events keyed by account, then time a bare consumer and the flow."""
    from streamml.benchmarks.kafka_bench import bare_consume_rate, key_partitions, produce_events

    from streamml.broker import start_broker

    out = Path(args.data_dir)
    out.mkdir(parents=True, exist_ok=True)
    procs = sorted({int(p) for p in str(args.processes).split(",")})
    routing = getattr(args, "routing", "exchange")
    repeat = max(1, getattr(args, "repeat", 1))
    client = getattr(args, "kafka_client", "kafka-python")
    paths = _input_files(out, args.events, args.accounts, args.seed, 1, args.zipf)
    table = _read_table(paths[0])
    keys = [a.encode() for a in table.column("account").to_pylist()]
    values = _kafka_values(table)
    partitions = args.partitions
    targets = np.asarray(key_partitions(keys, partitions))
    # with keyed producing, each partition holds its records in file order
    tables = [table.filter(pa.array(targets == k)) for k in range(partitions)]
    broker = None if args.brokers else start_broker()
    bootstrap = args.brokers or broker.bootstrap  # type: ignore[union-attr]
    topic = f"bench-errors-{args.events}-{args.accounts}-p{partitions}-{time.time_ns():x}"
    runs: list[BenchRun] = []
    repeats: dict[int, list[BenchRun]] = {p: [] for p in procs}
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
        bare = bare_consume_rate(bootstrap, topic, produced.records)
        with tempfile.TemporaryDirectory(prefix="streamml-bench-", dir=out) as tmp:
            work = Path(tmp)
            # Process counts take turns, so a change of the machine's load falls on all of them.
            for _ in range(repeat):
                for p in procs:
                    run = run_kafka_once(
                        bootstrap, topic, p, work, args.history, client=client, routing=routing
                    )
                    repeats[p].append(run)
                    if not args.no_check:
                        stats = work / f"stats-kafka-p{p}.json"
                        c = orjson.loads(stats.read_bytes())["counters"]
                        assert c.get("read", 0) == produced.records, (c, produced.records)
                        _check_tables(tables, work / f"state-kafka-p{p}", c, args.check_accounts)
            runs = [_median_run(repeats[p]) for p in procs]
    finally:
        if broker is not None:
            broker.stop()
    report: dict[str, object] = {
        "source": "kafka",
        "events": args.events,
        "accounts": args.accounts,
        "zipf": args.zipf,
        "partitions": partitions,
        "routing": routing,
        "repeat": repeat,
        "kafka_client": client,
        "produce": {
            "name": produced.name,
            "records": produced.records,
            "seconds": produced.seconds,
            "per_s": produced.per_second,
        },
        "bare_consumer": {
            "records": bare.records,
            "seconds": bare.seconds,
            "per_s": bare.per_second,
        },
        "runs": [_run_row(r, repeats[r.processes]) for r in runs],
        "ratio_vs_bare_consumer": [r.events_per_s / r.processes / bare.per_second for r in runs],
    }
    if len(runs) > 1:
        report["scaling"] = runs[-1].events_per_s / runs[0].events_per_s
    return report


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults and keep the description's paragraphs."""


def register(bench_sub: argparse._SubParsersAction) -> None:
    """Add `streamml bench error-count`."""
    p = bench_sub.add_parser(
        "error-count",
        help="events/s, CPU and peak RSS of the error-count flow on a CSV file or a Kafka topic",
        description=__doc__,
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--events", type=int, default=2_000_000, help="events to generate")
    p.add_argument("--accounts", type=int, default=100_000, help="size of the account population")
    p.add_argument("--seed", type=int, default=7, help="generator seed")
    p.add_argument(
        "--zipf",
        type=float,
        default=DEFAULT_ZIPF,
        help="account popularity exponent (heavy-tailed: with many accounts, many never "
        "occur); 0 draws accounts uniformly, so about "
        "accounts x (1 - exp(-events/accounts)) distinct accounts occur",
    )
    p.add_argument(
        "--processes", default="1", help="process counts to run, comma-separated (e.g. 1,2)"
    )
    p.add_argument(
        "--files",
        type=int,
        default=0,
        help="input files, each with its accounts (0: the largest process count)",
    )
    p.add_argument("--history", action="store_true", help="also write the history store")
    p.add_argument(
        "--routing",
        choices=["exchange", "partition"],
        default="exchange",
        help="exchange: shard batches go to the process Bytewax hashes the shard to; partition: "
        "murmur2 shards stay in the process reading their file or topic partition (the files "
        "are generated with each account in its murmur2 file)",
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per process count (taking turns); the median run is reported, with the "
        "lowest and highest events/s",
    )
    p.add_argument(
        "--recovery",
        action="store_true",
        help="also time a run with recovery on (snapshots every 10 s) against one without",
    )
    p.add_argument("--no-check", action="store_true", help="skip the correctness check")
    p.add_argument(
        "--check-accounts",
        type=int,
        default=50,
        help="accounts checked per file or partition",
    )
    p.add_argument(
        "--count-accounts",
        action="store_true",
        help="after each run, count the accounts in the state (scans every shard)",
    )
    p.add_argument("--flink", action="store_true", help="also run Flink SQL on the same file")
    p.add_argument(
        "--data-dir",
        default="benchmarks/out",
        help="where inputs are generated and the state of each run is kept",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    kafka = p.add_argument_group("Kafka source (--source kafka)")
    kafka.add_argument(
        "--source",
        choices=["file", "kafka"],
        default="file",
        help="read the generated CSV file, or produce it into a Kafka topic and read "
        "that with --stop-at-end",
    )
    kafka.add_argument("--partitions", type=int, default=3, help="partitions of the topic")
    kafka.add_argument(
        "--brokers",
        help="bootstrap HOST:PORT of a running broker; unset: start a local tansu broker",
    )
    kafka.add_argument(
        "--kafka-client",
        choices=["kafka-python", "confluent"],
        default="kafka-python",
        help="the client the flow reads the topic with",
    )
    kafka.add_argument(
        "--produce-processes",
        type=int,
        default=2,
        help="producer processes filling the topic",
    )
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    if args.events < 1 or args.accounts < 1:
        print("streamml bench error-count: --events and --accounts must be >= 1", file=sys.stderr)
        return 2
    if args.zipf < 0 or args.partitions < 1 or args.produce_processes < 1 or args.repeat < 1:
        print(
            "streamml bench error-count: need --zipf >= 0, --partitions >= 1, "
            "--produce-processes >= 1 and --repeat >= 1",
            file=sys.stderr,
        )
        return 2
    report = run_bench(args)
    if args.json:
        print(orjson.dumps(report).decode())
        return 0
    runs: list[dict] = report["runs"]  # type: ignore[assignment]
    counted = any("accounts_stored" in r for r in runs)
    rows = [
        (
            r["processes"],
            human(r["events_per_s"]),
            f"{human(r['events_per_s_min'])}-{human(r['events_per_s_max'])}",
            human(r["events_per_s_incl_startup"]),
            f"{r['cpu_s']:.1f}",
            f"{r['peak_rss_mib']:.0f}",
            f"{r['peak_rss_sum_mib']:.0f}",
            f"{r['state_mib']:.0f}",
            r["alerts"],
            f"{r['crossed_batches']} / {human(r['crossed_events'])}",
            *([human(r.get("accounts_stored", 0))] if counted else []),
        )
        for r in runs
    ]
    headers = [
        "processes",
        "events/s (median)",
        "events/s range",
        "events/s incl. start",
        "CPU s",
        "peak RSS MiB (max)",
        "peak RSS MiB (sum)",
        "state MiB",
        "alerts",
        "crossed batches / events",
        *(["accounts stored"] if counted else []),
    ]
    if report.get("source") == "kafka":
        prod: dict = report["produce"]  # type: ignore[assignment]
        bare: dict = report["bare_consumer"]  # type: ignore[assignment]
        print(
            f"{prod['name']}: {prod['records']:,} records in {prod['seconds']:.1f} s, "
            f"{human(prod['per_s'])}/s"
        )
        print(
            f"bare kafka-python consumer: {bare['records']:,} records in {bare['seconds']:.1f} s, "
            f"{human(bare['per_s'])}/s"
        )
    print(
        f"routing: {report.get('routing', 'exchange')}, runs per process count: {report['repeat']}"
    )
    print(format_table(rows, headers=headers))
    if report.get("source") == "kafka":
        for r, ratio in zip(runs, report["ratio_vs_bare_consumer"], strict=True):  # type: ignore[arg-type]
            print(
                f"{r['processes']} process(es): {human(r['events_per_s_per_process'])} events/s "
                f"per process = {ratio:.2f}x the bare consumer"
            )
    if "scaling" in report:
        print(f"scaling {runs[-1]['processes']} vs 1 process: {report['scaling']:.2f}x")
    if "recovery" in report:
        r = report["recovery"]
        print(
            f"recovery (snapshots every 10 s): {human(r['events_per_s_with'])} events/s vs "
            f"{human(r['events_per_s_without'])} without, overhead {r['overhead']:.1%}"
        )
    if isinstance(report.get("flink"), dict):
        f = report["flink"]
        print(
            f"Flink SQL (p=1): {human(f['events_per_s'])} events/s excluding start-up; "
            f"streamml / Flink = {report['ratio_vs_flink']:.1f}x"
        )
    elif "flink" in report:
        print(f"Flink SQL: {report['flink']}")
    return 0
