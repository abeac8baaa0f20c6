"""Throughput benchmark of the error-count flow on a CSV file or a Kafka topic.

File source (the default): the flow reads a generated CSV file with RocksDB state and the online
store, optionally compared with Flink SQL on the same file.

Kafka source (``--source kafka``, run by `streamml.benchmarks.error_count_kafka`): a local
tansu broker is started (or ``--brokers`` is used), the same generated events are produced as
JSON values keyed by account into a topic of ``--partitions`` partitions (Kafka's default key
partitioner, so each account's events keep their order in one partition), then, ``--runs`` times
in turn, a bare kafka-python consumer reads the topic for reference and the flow reads it with
``--stop-at-end``.

The flow runs with the defaults of ``streamml run error-count``: it writes the history store
(``STATE_DIR/history``) unless ``--no-history``; the report says which. Each process count is run
``--runs`` times (default 1 on a file, 3 on Kafka); the figures are the median of the runs with
their spread (min-max).

Routing (``--routing``): ``exchange`` (the default) keys shard batches ``shard-NNN`` and Bytewax
moves each to the process it hashes the key to; ``partition`` creates the state dir with the
murmur2 shard hash (Kafka's default key partitioner) and keeps every shard in the process that
reads its input partition (the files are then generated with each account in the file its
murmur2 picks, as ``streamml generate --files N --by-key`` does). Each run reports how many
shard batches (and events) crossed processes.

The figures are events per second (over the flow's own time, from the moment a worker has built
the flow, after Python start-up and imports, to its end: connecting the processes and opening the
input and the state count, for Kafka about 0.3-0.45 s of connecting and finding each partition's
end; and over the whole wall time, process start-up included), CPU seconds and peak RSS of the
worker processes (the sum of each worker's own peak), and the disk size of the state directory.
Correctness is checked on the same run: every row is accounted for, and the final values of
sampled accounts equal a brute-force count over the file
(for Kafka: over each partition in produce order).

With ``--flink``, Flink SQL counts the same rows (in event-time order, so that none is behind its
watermark; the run fails if one is, if Flink reads another number of rows, or if its alert windows
differ from a brute-force count), and start-up is taken out of both engines the same way: the
median wall time of 3 runs on a one-row file, with the same settings, is subtracted from the wall
time of the run on the real file (streamml: the worker processes, Python start-up included;
Flink: the job, in a JVM already warm).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
from streamml.dataflows.error_count import ErrorCountConfig, SourceConfig
from streamml.operators.sources import GeneratorConfig
from streamml.state.layout import StateLayout
from streamml.state.online import OnlineStore
from streamml.state.rolling_store import RollingStateStore

from streamml.console import Progress, format_table, human
from streamml.generate import write_events
from streamml.jobs import run_error_count

__all__ = [
    "BenchRun",
    "count_accounts",
    "dir_bytes",
    "register",
    "run_bench",
    "run_rows",
    "startup_seconds",
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
    crossed_batches: int = 0
    crossed_events: int = 0

    @property
    def events_per_s(self) -> float:
        """Events per second from the flow's start to its end (process start-up excluded)."""
        return self.events / max(self.flow_s, 1e-9)


def input_files(
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


def read_table(path: Path) -> pa.Table:
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
    check_tables([read_table(p) for p in paths], state_dir, counters, sample)


def check_tables(
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


def timed_run(config: ErrorCountConfig, processes: int, snapshot_interval_s: int = 10) -> BenchRun:
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
        crossed_batches=result.counters.get("crossed_batches", 0),
        crossed_events=result.counters.get("crossed_events", 0),
    )


def bench_layout(routing: str) -> StateLayout:
    """Return the state layout of a run with `routing` (murmur2 shards for partition routing)."""
    return StateLayout(shard_hash="murmur2" if routing == "partition" else "crc32")


def run_once(
    paths: list[Path],
    processes: int,
    work: Path,
    history: bool,
    recovery: bool = False,
    tag: str | None = None,
    routing: str = "exchange",
    store: dict[str, object] | None = None,
) -> BenchRun:
    """Run the flow over `paths` with a fresh state dir (and recovery dir); return its figures.

    The state dir is ``work/state-TAG`` (TAG: `tag`, else from `processes` and `recovery`).
    `store` holds `ErrorCountConfig`'s state settings (see `store_settings`).
    """
    tag = tag or f"p{processes}" + ("-recovery" if recovery else "")
    state = work / f"state-{tag}"
    shutil.rmtree(state, ignore_errors=True)
    recovery_dir = work / f"recovery-{tag}" if recovery else None
    if recovery_dir is not None:
        shutil.rmtree(recovery_dir, ignore_errors=True)
    config = ErrorCountConfig(
        source=SourceConfig(kind="file", paths=tuple(str(p) for p in paths)),
        state_dir=state,
        layout=bench_layout(routing),
        history_dir=state / "history" if history else None,
        stats_path=work / f"stats-{tag}.json",
        recovery_dir=recovery_dir,
        routing=routing,
        **(store or {}),  # type: ignore[arg-type]
    )
    return timed_run(config, processes)


def store_settings(args: argparse.Namespace) -> dict[str, object]:
    """Return the flow's state settings given on the command line (memory, codec, compression)."""
    out: dict[str, object] = {}
    memory = getattr(args, "state_memory_mb", None)
    if memory is not None:
        if memory < 8:
            raise ValueError("--state-memory-mb must be >= 8")
        out["state_memory_bytes"] = memory << 20
    for name in ("state_codec", "state_compression"):
        value = getattr(args, name, None)
        if value is not None:
            out[name] = value
    return out


def startup_seconds(
    work: Path, processes: int, history: bool, runs: int = 3
) -> tuple[float, list[float]]:
    """Return the median wall seconds of `runs` runs of the flow on a one-row file, and each.

    The same settings as the real runs (`processes`, `history`, a fresh state dir each time):
    what a run costs whatever its input, from starting the worker processes to their exit.
    """
    one_row = work / "one-row.csv"
    one_row.write_text("account,ts,code\nstartup-probe,1767225600000,E101\n")
    walls = sorted(
        run_once([one_row], processes, work, history, tag=f"startup-p{processes}-{i}").wall_s
        for i in range(runs)
    )
    return statistics.median(walls), walls


def _run_row(r: BenchRun) -> dict[str, object]:
    return {
        "processes": r.processes,
        "events": r.events,
        "events_per_s": r.events_per_s,
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


def run_rows(runs: list[BenchRun]) -> dict[str, object]:
    """Return the figures of repeated runs of one process count: medians, with their spread.

    Each figure of `_run_row` is the median over `runs`; ``spread`` holds, per figure, the
    min and max, and ``runs`` the number of runs.
    """
    rows = [_run_row(r) for r in runs]
    out: dict[str, object] = {"processes": runs[0].processes, "runs": len(rows)}
    spread: dict[str, list[float]] = {}
    for key in rows[0]:
        if key == "processes":
            continue
        values = [row[key] for row in rows]
        if all(isinstance(v, int) for v in values):
            out[key] = statistics.median_low(values)  # type: ignore[type-var]
        else:
            out[key] = statistics.median(float(v) for v in values)  # type: ignore[arg-type]
        spread[key] = [min(values), max(values)]  # type: ignore[type-var]
    out["spread"] = spread
    return out


def _store_report(store: dict[str, object]) -> dict[str, object]:
    config = ErrorCountConfig(source=SourceConfig(kind="generate"), state_dir=Path("."), **store)  # type: ignore[arg-type]
    return {
        "memory_mib": config.state_memory_bytes >> 20,
        "codec": config.state_codec,
        "compression": config.state_compression,
    }


def run_bench(args: argparse.Namespace) -> dict[str, object]:
    """Generate (or reuse) the input, run the flow per process count, compare with Flink."""
    if getattr(args, "source", "file") == "kafka":
        from streamml.benchmarks.error_count_kafka import run_kafka_bench

        return run_kafka_bench(args)
    out = Path(args.data_dir)
    out.mkdir(parents=True, exist_ok=True)
    procs = sorted({int(p) for p in str(args.processes).split(",")})
    files = args.files or max(procs)
    zipf = getattr(args, "zipf", DEFAULT_ZIPF)
    routing = getattr(args, "routing", "exchange")
    paths = input_files(
        out, args.events, args.accounts, args.seed, files, zipf, routing == "partition"
    )
    history = not args.no_history
    store = store_settings(args)
    repeats = runs_of(args)
    runs: dict[int, list[BenchRun]] = {p: [] for p in procs}
    stored: dict[int, int] = {}
    startup: tuple[float, list[float]] | None = None
    with tempfile.TemporaryDirectory(prefix="streamml-bench-", dir=out) as tmp:
        work = Path(tmp)
        # Process counts take turns, so a change of the machine's load falls on all of them.
        for _ in range(repeats):
            for p in procs:
                run = run_once(paths, p, work, history, routing=routing, store=store)
                runs[p].append(run)
                if not args.no_check:
                    c = orjson.loads((work / f"stats-p{p}.json").read_bytes())["counters"]
                    _check(paths, work / f"state-p{p}", c, args.check_accounts)
                if getattr(args, "count_accounts", False):
                    stored[p] = count_accounts(work / f"state-p{p}")
        rows = [run_rows(runs[p]) for p in procs]
        for row in rows:
            if row["processes"] in stored:
                row["accounts_stored"] = stored[row["processes"]]  # type: ignore[index]
        if args.flink and files == 1:
            startup = startup_seconds(work, procs[0], history)
    report: dict[str, object] = {
        "source": "file",
        "events": args.events,
        "accounts": args.accounts,
        "zipf": zipf,
        "files": files,
        "history": history,
        "routing": routing,
        "store": _store_report(store),
        "runs": rows,
    }
    if len(rows) > 1:
        report["scaling"] = float(rows[-1]["events_per_s"]) / float(rows[0]["events_per_s"])  # type: ignore[arg-type]
    if getattr(args, "recovery", False):
        with tempfile.TemporaryDirectory(prefix="streamml-bench-", dir=out) as tmp:
            plain = run_once(paths, procs[0], Path(tmp), history)
            with_recovery = run_once(paths, procs[0], Path(tmp), history, recovery=True)
        report["recovery"] = {
            "processes": procs[0],
            "events_per_s_without": plain.events_per_s,
            "events_per_s_with": with_recovery.events_per_s,
            "overhead": 1 - with_recovery.events_per_s / plain.events_per_s,
        }
    if args.flink and files > 1:
        report["flink"] = "not run: Flink reads one file (--files 1)"
    elif args.flink:
        report.update(_flink_comparison(paths[0], out, rows[0], startup))
    return report


def runs_of(args: argparse.Namespace) -> int:
    """Return the runs of each process count: `--runs`, else 3 on Kafka and 1 on a file."""
    runs = getattr(args, "runs", None)
    if runs:
        return int(runs)
    return 3 if getattr(args, "source", "file") == "kafka" else 1


def _flink_comparison(
    path: Path,
    out: Path,
    row: dict[str, object],
    startup: tuple[float, list[float]] | None,
) -> dict[str, object]:
    """Run Flink SQL on `path` (checked) and compare it with the streamml `row`, start-up out."""
    from streamml.benchmarks.flink_baseline import flink_available
    from streamml.benchmarks.flink_checks import run_checked_flink_sql

    if not flink_available():
        return {"flink": "not installed (make flink)"}
    assert startup is not None
    with tempfile.TemporaryDirectory(prefix="streamml-bench-flink-", dir=out) as tmp:
        checked = run_checked_flink_sql(path, Path(tmp), threshold=2000, parallelism=1)
    fr = checked.result
    wall = float(row["wall_s"])  # type: ignore[arg-type]
    streamml_rate = float(row["events"]) / max(wall - startup[0], 1e-9)  # type: ignore[arg-type]
    return {
        "flink": {
            "events": fr.events,
            "events_per_s": fr.events_per_s,
            "events_per_s_total": fr.events_per_s_total,
            "seconds_total": fr.seconds_total,
            "seconds_startup": fr.seconds_startup,
            "seconds_startup_runs": list(fr.seconds_startup_runs),
            "seconds_excluding_startup": fr.seconds_excluding_startup,
            "alert_windows": fr.alert_windows,
            "alert_windows_checked": checked.alert_windows_checked,
            "rows_behind_watermark": fr.rows_behind_watermark,
            "events_read_by_flink": fr.events_read_by_flink,
            "input": str(checked.ordered_input),
            "parallelism": fr.parallelism,
            "flink_version": fr.flink_version,
        },
        "streamml_startup_subtracted": {
            "processes": row["processes"],
            "wall_s": wall,
            "seconds_startup": startup[0],
            "seconds_startup_runs": startup[1],
            "seconds_excluding_startup": wall - startup[0],
            "events_per_s": streamml_rate,
        },
        "ratio_vs_flink": streamml_rate / fr.events_per_s,
        "ratio_vs_flink_first_to_last_record": float(row["events_per_s"]) / fr.events_per_s,  # type: ignore[arg-type]
    }


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
    p.add_argument(
        "--no-history",
        action="store_true",
        help="do not write the history store (as `streamml run error-count --no-history`; by "
        "default the flow writes it to STATE_DIR/history, as `run error-count` does)",
    )
    p.add_argument(
        "--runs",
        type=int,
        default=0,
        help="runs of each process count (median and spread reported); 0: 3 on Kafka, 1 on a file",
    )
    p.add_argument(
        "--routing",
        choices=["exchange", "partition"],
        default="exchange",
        help="exchange: shard batches go to the process Bytewax hashes the shard to; partition: "
        "murmur2 shards stay in the process reading their file or topic partition (the files "
        "are generated with each account in its murmur2 file)",
    )
    p.add_argument(
        "--recovery",
        action="store_true",
        help="also time a run with recovery on (snapshots every 10 s) against one without",
    )
    p.add_argument(
        "--state-memory-mb",
        type=int,
        help="RocksDB memory of each flow process (as `run error-count --state-memory-mb`; "
        "default: the flow's, 256)",
    )
    p.add_argument(
        "--state-codec",
        choices=["sparse", "raw"],
        help="how the new state dir stores account records (STREAMML_STATE_CODEC; default: "
        "the flow's, sparse); raw is the format of state dirs written before the codec",
    )
    p.add_argument(
        "--state-compression",
        choices=["lz4", "none"],
        help="RocksDB block compression (STREAMML_STATE_COMPRESSION; default: the flow's, lz4)",
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
    if args.zipf < 0 or args.partitions < 1 or args.produce_processes < 1 or args.runs < 0:
        print(
            "streamml bench error-count: need --zipf >= 0, --partitions >= 1, "
            "--produce-processes >= 1 and --runs >= 0",
            file=sys.stderr,
        )
        return 2
    from streamml.benchmarks.flink_baseline import FlinkError

    try:
        report = run_bench(args)
    except FlinkError as exc:
        print(f"streamml bench error-count: the Flink baseline failed: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(report).decode())
        return 0
    runs: list[dict] = report["runs"]  # type: ignore[assignment]
    counted = any("accounts_stored" in r for r in runs)
    repeated = any(r["runs"] > 1 for r in runs)

    def rate(r: dict) -> str:
        if r["runs"] == 1:
            return human(r["events_per_s"])
        low, high = r["spread"]["events_per_s"]
        return f"{human(r['events_per_s'])} ({human(low)}-{human(high)})"

    rows = [
        (
            r["processes"],
            *([r["runs"]] if repeated else []),
            rate(r),
            human(r["events_per_s_incl_startup"]),
            f"{r['cpu_s']:.1f}",
            f"{r['peak_rss_mib']:.0f}",
            f"{r['state_mib']:.0f}",
            f"{r['alerts']:.0f}",
            f"{r['crossed_batches']:.0f} / {human(r['crossed_events'])}",
            *([human(r.get("accounts_stored", 0))] if counted else []),
        )
        for r in runs
    ]
    headers = [
        "processes",
        *(["runs"] if repeated else []),
        "events/s" + (" median (min-max)" if repeated else ""),
        "events/s incl. start",
        "CPU s",
        "peak RSS MiB (sum of processes)",
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
        low, high = bare["per_s_spread"]
        print(
            f"bare kafka-python consumer: {bare['records']:,} records, median of {bare['runs']} "
            f"runs {human(bare['per_s'])}/s ({human(low)}-{human(high)})"
        )
    print(
        "history store: "
        + (
            "written (the default of `streamml run error-count`)"
            if report["history"]
            else "not written (--no-history)"
        )
    )
    if repeated:
        print("figures: the median of the runs (events/s with min-max)")
    print(f"routing: {report.get('routing', 'exchange')}")
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
        m = report["streamml_startup_subtracted"]
        print(
            f"Flink SQL (p=1, input in event-time order): {f['events_read_by_flink']:,} rows read, "
            f"{f['rows_behind_watermark']} behind the watermark, {f['alert_windows']:,} alert "
            f"windows, equal to a brute-force count"
        )
        print(
            "start-up subtracted (median of 3 runs on a one-row file): "
            f"streamml {m['wall_s']:.2f} - {m['seconds_startup']:.2f} s = "
            f"{human(m['events_per_s'])} events/s; Flink {f['seconds_total']:.2f} - "
            f"{f['seconds_startup']:.2f} s = {human(f['events_per_s'])} events/s"
        )
        print(
            f"streamml / Flink = {report['ratio_vs_flink']:.1f}x "
            f"(streamml first to last record: {report['ratio_vs_flink_first_to_last_record']:.1f}x)"
        )
    elif "flink" in report:
        print(f"Flink SQL: {report['flink']}")
    return 0
