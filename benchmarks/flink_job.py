"""Apache Flink SQL baseline for ``streamml bench error-count`` (run inside ``.venv-flink``).

This script is executed by ``benchmarks/flink_baseline.py`` with the interpreter of the separate
Flink virtualenv (``.venv-flink/bin/python``); it imports only PyFlink and the standard library,
never our own packages (whose dependencies clash with PyFlink's pins).

The job (Flink SQL, streaming mode, event time)::

    source  filesystem connector, CSV ``account,ts,code`` (header skipped, see below)
            rt = TO_TIMESTAMP_LTZ(ts, 3), WATERMARK FOR rt AS rt - <out-of-orderness>
    query   SELECT account, window_start, window_end, COUNT(*)
            FROM TABLE(HOP(TABLE src, DESCRIPTOR(rt), <slide>, <size>))
            GROUP BY account, window_start, window_end HAVING COUNT(*) > <threshold>
    sink    filesystem connector, CSV, one line per alert window (only a few thousand lines,
            so writing them costs nothing measurable); the lines are counted afterwards.

Configuration: Flink defaults (heap state backend, no checkpointing, two-phase window
aggregation) except ``pipeline.object-reuse=true`` (a standard, safe tuning for SQL jobs that was
~20% faster here; ``--no-object-reuse`` turns it off) and the parallelism; ``--conf KEY=VALUE``
sets any other Flink option.

Windows are aligned to the epoch (session time zone UTC), size must be a multiple of the slide
(a Flink requirement); each event falls into ``size / slide`` windows (24 with the defaults).
The CSV header line cannot be skipped by Flink's CSV format, so the format runs with
``csv.ignore-parse-errors`` (the header becomes a row with ``ts`` NULL) and such rows are filtered
out before the window; the rowtime column uses ``COALESCE(ts, 0)`` because Flink's watermark
assigner rejects NULL rowtimes.

How start-up is excluded (all in one JVM / one TableEnvironment, i.e. one "session"):

1. the JVM gateway and TableEnvironment are started (``seconds_jvm_start``, not counted);
2. a warm-up run of the *identical* job on a 1-row CSV file (``seconds_cold_first_job``; pays
   one-off class loading / code generation, not counted);
3. ``--startup-runs`` (3) more runs of the identical job on the same 1-row file; their median
   is ``seconds_startup`` -- the per-job fixed cost in a warm JVM (SQL planning, code
   generation, job graph, task deployment, source split enumeration, sink commit, teardown);
4. the real run on the input file: ``seconds_total`` = wall time from ``execute_sql(INSERT ...)``
   to ``wait()`` returning.

``seconds_excluding_startup = seconds_total - seconds_startup`` and
``events_per_s = events / seconds_excluding_startup``; ``events_per_s_total`` uses
``seconds_total``. Because the real run happens in a warmed JVM, ``seconds_total`` is already
slightly favourable to Flink compared with a cold single-job run.

Sanity checks: ``events`` is the number of data rows in the file (counted here in Python);
``events_read_by_flink`` is a separate, untimed Flink batch job ``SELECT COUNT(*)`` over the same
source (skip with ``--no-count-check``); ``rows_behind_watermark`` counts rows whose ``ts`` is
below ``max(ts so far) - out_of_orderness`` (such rows may be dropped as late by the streaming
job, so it should be 0 for a time-ordered file). ``alert_windows`` is the number of
``(account, window)`` pairs with ``COUNT(*) > threshold``.

Output: exactly one JSON object line on stdout (Flink/JVM logging goes to stderr or log files).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["main"]

_MS_PER_DAY = 86_400_000


def _interval(ms: int) -> str:
    """Return a Flink SQL ``DAY TO SECOND`` interval literal for ``ms`` milliseconds."""
    days, rest = divmod(ms, _MS_PER_DAY)
    hours, rest = divmod(rest, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return (
        f"INTERVAL '{days} {hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}' DAY TO SECOND(3)"
    )


def _sql_str(value: str) -> str:
    """Quote ``value`` as a SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def _scan_csv(path: Path, out_of_orderness_ms: int) -> tuple[int, int]:
    """Return ``(data_rows, rows_behind_watermark)`` of the CSV file at ``path``."""
    rows = 0
    behind = 0
    max_ts = None
    with path.open("rb") as fh:
        fh.readline()  # header
        for line in fh:
            if not line.strip():
                continue
            rows += 1
            try:
                ts = int(line.split(b",", 2)[1])
            except (IndexError, ValueError):
                continue
            if max_ts is None or ts > max_ts:
                max_ts = ts
            elif ts < max_ts - out_of_orderness_ms:
                behind += 1
    return rows, behind


def _count_lines(directory: Path) -> int:
    """Count the non-empty lines of every file below ``directory`` (hidden files included)."""
    total = 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            with open(os.path.join(root, name), "rb") as fh:
                total += sum(1 for line in fh if line.strip())
    return total


def _descendant_pids(pid: int) -> list[int]:
    """Return the pids of all descendants of ``pid`` (Linux ``/proc``; empty elsewhere)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        task_dir = Path(f"/proc/{current}/task")
        try:
            tids = list(task_dir.iterdir())
        except OSError:
            continue
        for tid in tids:
            try:
                kids = (tid / "children").read_text().split()
            except OSError:
                continue
            for kid in kids:
                out.append(int(kid))
                todo.append(int(kid))
    return out


def _children_cpu_seconds() -> float | None:
    """Return user+system CPU seconds used so far by this process's descendants (the JVM)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    found = False
    for pid in _descendant_pids(os.getpid()):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
        found = True
    return total / ticks if found else None


class _Job:
    """One TableEnvironment running the HOP-count job on given files."""

    def __init__(self, args: argparse.Namespace) -> None:
        from pyflink.table import EnvironmentSettings, TableEnvironment

        self.args = args
        self.env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
        config = self.env.get_config()
        config.set("parallelism.default", str(args.parallelism))
        config.set("table.local-time-zone", "UTC")
        config.set("pipeline.name", "flink-error-count-baseline")
        if args.object_reuse:
            config.set("pipeline.object-reuse", "true")
        for item in args.conf:
            key, _, value = item.partition("=")
            config.set(key.strip(), value.strip())
        self._n = 0

    def _source_ddl(self, name: str, csv_path: Path) -> str:
        """Return the CREATE TABLE statement of the CSV source ``name``."""
        return f"""
            CREATE TEMPORARY TABLE {name} (
                account STRING,
                ts BIGINT,
                code STRING,
                rt AS TO_TIMESTAMP_LTZ(COALESCE(ts, 0), 3),
                WATERMARK FOR rt AS rt - {_interval(self.args.out_of_orderness_ms)}
            ) WITH (
                'connector' = 'filesystem',
                'path' = {_sql_str(str(csv_path))},
                'format' = 'csv',
                'csv.ignore-parse-errors' = 'true'
            )"""

    def run(self, csv_path: Path, out_dir: Path) -> tuple[float, int]:
        """Run the job on ``csv_path`` writing alerts to ``out_dir``; return (seconds, alerts)."""
        self._n += 1
        src, sink = f"src_{self._n}", f"alerts_{self._n}"
        a = self.args
        t0 = time.perf_counter()
        self.env.execute_sql(self._source_ddl(src, csv_path))
        self.env.execute_sql(f"""
            CREATE TEMPORARY TABLE {sink} (
                account STRING,
                window_start TIMESTAMP(3),
                window_end TIMESTAMP(3),
                cnt BIGINT
            ) WITH (
                'connector' = 'filesystem',
                'path' = {_sql_str(str(out_dir))},
                'format' = 'csv'
            )""")
        result = self.env.execute_sql(f"""
            INSERT INTO {sink}
            SELECT account, window_start, window_end, COUNT(*) AS cnt
            FROM TABLE(HOP(TABLE {src}, DESCRIPTOR(rt),
                           {_interval(a.slide_ms)}, {_interval(a.window_ms)}))
            WHERE ts IS NOT NULL
            GROUP BY account, window_start, window_end
            HAVING COUNT(*) > {int(a.threshold)}""")
        result.wait()
        seconds = time.perf_counter() - t0
        return seconds, _count_lines(out_dir)

    def batch_count(self, csv_path: Path) -> int:
        """Count the rows Flink reads from ``csv_path`` (untimed batch job)."""
        from pyflink.table import EnvironmentSettings, TableEnvironment

        benv = TableEnvironment.create(EnvironmentSettings.in_batch_mode())
        benv.get_config().set("parallelism.default", str(self.args.parallelism))
        benv.execute_sql(self._source_ddl("src_count", csv_path))
        with benv.execute_sql(
            "SELECT COUNT(*) FROM src_count WHERE ts IS NOT NULL"
        ).collect() as rows:
            return int(next(iter(rows))[0])


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", required=True, type=Path, help="CSV file account,ts,code")
    p.add_argument("--window-ms", type=int, default=86_400_000)
    p.add_argument("--slide-ms", type=int, default=3_600_000)
    p.add_argument("--threshold", type=int, default=2000)
    p.add_argument("--parallelism", type=int, default=1)
    p.add_argument("--out-of-orderness-ms", type=int, default=0, help="watermark delay")
    p.add_argument("--output-dir", type=Path, help="keep the alert CSV files here (must not exist)")
    p.add_argument(
        "--startup-runs", type=int, default=3, help="1-row runs; the median is the start-up"
    )
    p.add_argument(
        "--no-object-reuse",
        dest="object_reuse",
        action="store_false",
        help="keep Flink's default pipeline.object-reuse=false",
    )
    p.add_argument(
        "--conf", action="append", default=[], metavar="KEY=VALUE", help="extra Flink option"
    )
    p.add_argument("--no-count-check", action="store_true", help="skip the batch COUNT(*) job")
    args = p.parse_args(argv)
    if args.window_ms <= 0 or args.slide_ms <= 0 or args.window_ms % args.slide_ms:
        p.error("--window-ms must be a positive multiple of --slide-ms")
    if args.startup_runs < 1:
        p.error("--startup-runs must be >= 1")
    if not args.input.is_file():
        p.error(f"input file not found: {args.input}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the baseline and print one JSON line of results on stdout."""
    args = _parse_args(argv)
    # Keep stdout for the single JSON line: the JVM (started below, inheriting fd 1) and PyFlink
    # may print logs, so fd 1 points at stderr while the jobs run.
    sys.stdout.flush()
    json_fd = os.dup(1)
    os.dup2(2, 1)
    csv_path = args.input.resolve()
    events, behind = _scan_csv(csv_path, args.out_of_orderness_ms)

    scratch = Path(tempfile.mkdtemp(prefix="flink_baseline_"))
    try:
        tiny = scratch / "tiny.csv"
        tiny.write_text("account,ts,code\nwarmup,0,E\n")

        t0 = time.perf_counter()
        job = _Job(args)
        jvm_start = time.perf_counter() - t0

        cold, _ = job.run(tiny, scratch / "out_warmup")
        startup_runs = sorted(
            job.run(tiny, scratch / f"out_startup_{i}")[0] for i in range(args.startup_runs)
        )
        startup = statistics.median(startup_runs)

        out_dir = args.output_dir.resolve() if args.output_dir else scratch / "out_real"
        cpu0 = _children_cpu_seconds()
        total, alerts = job.run(csv_path, out_dir)
        cpu1 = _children_cpu_seconds()

        read_by_flink = None if args.no_count_check else job.batch_count(csv_path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    from pyflink.version import __version__ as flink_version

    excl = max(total - startup, 1e-9)
    record = {
        "events": events,
        "alert_windows": alerts,
        "seconds_total": round(total, 4),
        "seconds_startup": round(startup, 4),
        "seconds_excluding_startup": round(excl, 4),
        "events_per_s": round(events / excl, 1),
        "events_per_s_total": round(events / total, 1),
        "parallelism": args.parallelism,
        "flink_version": flink_version,
        "seconds_jvm_start": round(jvm_start, 4),
        "seconds_cold_first_job": round(cold, 4),
        "seconds_startup_runs": [round(x, 4) for x in startup_runs],
        "jvm_cpu_seconds": None if cpu0 is None or cpu1 is None else round(cpu1 - cpu0, 3),
        "events_read_by_flink": read_by_flink,
        "rows_behind_watermark": behind,
    }
    os.write(json_fd, (json.dumps(record) + "\n").encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
