"""Throughput benchmark of the error-count flow on a CSV file, optionally against Flink SQL.

The flow reads a generated CSV file with RocksDB state and the online store; the figures are
events per second (from the flow's first to its last record, and including process start-up),
CPU seconds and peak RSS of the worker processes. Correctness is checked on the same run: every
row is accounted for, and the final values of sampled accounts equal a brute-force count over the
file.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv

from dataflows.error_count import ErrorCountConfig, SourceConfig
from operators.sources import GeneratorConfig
from state.layout import StateLayout
from state.online import OnlineStore
from streamml.console import Progress, format_table, human
from streamml.generate_cli import write_events
from streamml.run_cli import run_error_count

__all__ = ["BenchRun", "register", "run_bench"]

WINDOW = 24
BUCKET_MS = 3_600_000


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

    @property
    def events_per_s(self) -> float:
        """Events per second from the flow's start to its end (process start-up excluded)."""
        return self.events / max(self.flow_s, 1e-9)


def _input_files(out: Path, events: int, accounts: int, seed: int, files: int) -> list[Path]:
    tag = f"errors-{events}-{accounts}-{seed}-{files}"
    target = out / tag / "errors.csv"
    done = out / tag / "done"
    if done.exists():
        return [Path(p) for p in done.read_text().split()]
    paths = write_events(
        target,
        GeneratorConfig(events=events, accounts=accounts, seed=seed),
        fmt="csv",
        files=files,
        progress=Progress(),
    )
    done.write_text("\n".join(str(p) for p in paths))
    return paths


def _check(paths: list[Path], state_dir: Path, counters: dict[str, int], sample: int) -> None:
    """Check every row is accounted for and sampled accounts equal a brute-force count."""
    tables = [
        pacsv.read_csv(
            p,
            convert_options=pacsv.ConvertOptions(
                column_types={"account": pa.string(), "ts": pa.int64()}
            ),
        )
        for p in paths
    ]
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


def run_once(paths: list[Path], processes: int, work: Path, history: bool) -> BenchRun:
    """Run the flow over `paths` with a fresh state dir and return its figures."""
    state = work / f"state-p{processes}"
    shutil.rmtree(state, ignore_errors=True)
    stats = work / f"stats-p{processes}.json"
    config = ErrorCountConfig(
        source=SourceConfig(kind="file", paths=tuple(str(p) for p in paths)),
        state_dir=state,
        layout=StateLayout(),
        history_dir=state / "history" if history else None,
        stats_path=stats,
    )
    result = run_error_count(config, processes=processes)
    if result.returncode != 0:
        raise RuntimeError(f"the flow failed with exit code {result.returncode}")
    body = orjson.loads(stats.read_bytes())
    return BenchRun(
        processes=processes,
        events=result.counters.get("read", 0),
        flow_s=body["updated_at"] - body["started_at"],
        wall_s=result.wall_s,
        cpu_s=result.cpu_s,
        peak_rss_bytes=result.peak_rss_bytes,
        alerts=result.counters.get("alerts", 0),
    )


def run_bench(args: argparse.Namespace) -> dict[str, object]:
    """Generate (or reuse) the input, run the flow per process count, compare with Flink."""
    out = Path(args.data_dir)
    out.mkdir(parents=True, exist_ok=True)
    procs = sorted({int(p) for p in str(args.processes).split(",")})
    files = args.files or max(procs)
    paths = _input_files(out, args.events, args.accounts, args.seed, files)
    runs = []
    with tempfile.TemporaryDirectory(prefix="streamml-bench-", dir=out) as tmp:
        work = Path(tmp)
        for p in procs:
            run = run_once(paths, p, work, args.history)
            runs.append(run)
            if not args.no_check:
                c = orjson.loads((work / f"stats-p{p}.json").read_bytes())["counters"]
                _check(paths, work / f"state-p{p}", c, args.check_accounts)
    report: dict[str, object] = {
        "events": args.events,
        "accounts": args.accounts,
        "files": files,
        "runs": [
            {
                "processes": r.processes,
                "events_per_s": r.events_per_s,
                "events_per_s_incl_startup": r.events / r.wall_s,
                "flow_s": r.flow_s,
                "wall_s": r.wall_s,
                "cpu_s": r.cpu_s,
                "peak_rss_mib": r.peak_rss_bytes / 2**20,
                "alerts": r.alerts,
            }
            for r in runs
        ],
    }
    if len(runs) > 1:
        report["scaling"] = runs[-1].events_per_s / runs[0].events_per_s
    if args.flink and files == 1:
        try:
            from benchmarks.flink_baseline import flink_available, run_flink_sql
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


def register(bench_sub: argparse._SubParsersAction) -> None:
    """Add `streamml bench error-count`."""
    p = bench_sub.add_parser(
        "error-count",
        help="events/s, CPU and peak RSS of the error-count flow on a CSV file",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--events", type=int, default=2_000_000)
    p.add_argument("--accounts", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--processes", default="1", help="process counts to run, comma-separated (e.g. 1,2)"
    )
    p.add_argument(
        "--files", type=int, default=0, help="input files, each with its accounts (default: max P)"
    )
    p.add_argument("--history", action="store_true", help="also write the history store")
    p.add_argument("--no-check", action="store_true", help="skip the correctness check")
    p.add_argument("--check-accounts", type=int, default=50, help="accounts checked per file")
    p.add_argument("--flink", action="store_true", help="also run Flink SQL on the same file")
    p.add_argument("--data-dir", default="benchmarks/out", help="where inputs are generated")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    if args.events < 1 or args.accounts < 1:
        print("streamml bench error-count: --events and --accounts must be >= 1", file=sys.stderr)
        return 2
    report = run_bench(args)
    if args.json:
        print(orjson.dumps(report).decode())
        return 0
    rows = [
        (
            r["processes"],
            human(r["events_per_s"]),
            human(r["events_per_s_incl_startup"]),
            f"{r['cpu_s']:.1f}",
            f"{r['peak_rss_mib']:.0f}",
            r["alerts"],
        )
        for r in report["runs"]
    ]
    print(
        format_table(
            rows,
            headers=[
                "processes",
                "events/s",
                "events/s incl. start",
                "CPU s",
                "peak RSS MiB",
                "alerts",
            ],
        )
    )
    if "scaling" in report:
        print(f"scaling {report['runs'][-1]['processes']} vs 1 process: {report['scaling']:.2f}x")
    if isinstance(report.get("flink"), dict):
        f = report["flink"]
        print(
            f"Flink SQL (p=1): {human(f['events_per_s'])} events/s excluding start-up; "
            f"streamml / Flink = {report['ratio_vs_flink']:.1f}x"
        )
    elif "flink" in report:
        print(f"Flink SQL: {report['flink']}")
    return 0
