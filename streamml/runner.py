"""Run a dataflow as one or more worker processes, with progress and a final summary."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from streamml.cluster import ClusterMember
from streamml.console import format_table, human
from streamml.worker import REFUSED_EXIT

__all__ = [
    "RunResult",
    "cost_rows",
    "event_progress",
    "free_ports",
    "own_peak_rss",
    "process_memory",
    "report_run",
    "run_flow_processes",
]


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a run ended: exit code, final counters, wall seconds and CPU seconds of the workers.

    `peak_rss_bytes` is the largest worker's own peak, `peak_rss_sum_bytes` the sum of every
    worker's own peak (what the run needs of the machine's memory at most).
    """

    returncode: int
    counters: dict[str, int]
    wall_s: float
    cpu_s: float
    peak_rss_bytes: int
    peak_rss_sum_bytes: int = 0


def free_ports(n: int) -> list[int]:
    """Return `n` free TCP ports on the loopback interface."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def process_memory(pid: int, field: str = "VmRSS") -> int:
    """Return a memory figure of process `pid` from ``/proc/PID/status`` in bytes (0: unknown).

    `field` is ``VmRSS`` (resident now) or ``VmHWM`` (its peak since it started its program).
    """
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def own_peak_rss(pid: int) -> int:
    """Return the peak RSS of process `pid` since it started its program (0 when unknown).

    Not `ru_maxrss`: Linux starts a child's `ru_maxrss` at the RSS of the parent that spawned it
    (the child runs in the parent's memory until it execs), so a benchmark holding its input in
    memory would see it in the peak of every flow process it starts. `VmHWM` is the high-water
    mark of the process's own memory.
    """
    return process_memory(pid, "VmHWM")


def run_flow_processes(
    import_str: str,
    env: Mapping[str, str],
    *,
    processes: int = 1,
    stats_path: Path | None = None,
    progress: Callable[[dict[str, Any], float], None] | None = None,
    extra_args: list[str] | None = None,
    log: TextIO | None = None,
    member: ClusterMember | None = None,
) -> RunResult:
    """Start `processes` workers of `import_str` (see `streamml.worker`) and wait for them.

    Workers run in Python's safe-path mode (``-P``) and never import from the current directory.
    Workers on one machine talk over loopback ports chosen here. With `member`, the one worker
    started is that process of a cluster spread over several hosts (`processes` must be 1).
    `progress` is called about twice a second with the counters read from `stats_path`. The
    peak RSS is the largest of the workers' own peaks (`own_peak_rss`, sampled while they run),
    and their sum.
    """
    from streamml.operators.sinks import read_stats

    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if member is not None and processes != 1:
        raise ValueError(
            f"a process of a cluster over several hosts runs one worker process, got {processes}"
        )
    base = [sys.executable, "-P", "-m", "streamml.worker", import_str, *(extra_args or [])]
    full_env = {**os.environ, **env}
    cmds = []
    if member is not None:
        cmds.append([*base, *member.worker_args()])
    elif processes == 1:
        cmds.append(base)
    else:
        addresses = ";".join(f"127.0.0.1:{p}" for p in free_ports(processes))
        cmds = [[*base, "-i", str(i), "-a", addresses] for i in range(processes)]
    errlog = log or tempfile.TemporaryFile("w+")  # noqa: SIM115
    started = time.time()
    # Workers print nothing meant for the user on stdout (Bytewax reports connection retries
    # there); both streams are kept and shown only when the run fails.
    procs = [subprocess.Popen(c, env=full_env, stdout=errlog, stderr=errlog) for c in cmds]
    codes: dict[int, int] = {}
    cpu = 0.0
    peak = 0
    peak_sum = 0
    own_peak: dict[int, int] = {}
    try:
        while len(codes) < len(procs):
            for p in procs:
                if p.pid in codes:
                    continue
                hwm = own_peak_rss(p.pid)
                if hwm:
                    own_peak[p.pid] = hwm
                pid, status, usage = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    codes[p.pid] = os.waitstatus_to_exitcode(status)
                    p.returncode = codes[p.pid]
                    cpu += usage.ru_utime + usage.ru_stime
                    worker_peak = own_peak.get(p.pid) or usage.ru_maxrss * 1024
                    peak = max(peak, worker_peak)
                    peak_sum += worker_peak
            if any(c != 0 for c in codes.values()):
                for p in procs:
                    if p.pid not in codes:
                        p.kill()
            if progress is not None and stats_path is not None:
                stats = read_stats(stats_path)
                if stats:
                    progress(stats["counters"], time.time() - started)
            if len(codes) < len(procs):
                time.sleep(0.1)
    except KeyboardInterrupt:
        for p in procs:
            if p.pid not in codes:
                p.send_signal(signal.SIGINT)
        for p in procs:
            if p.pid not in codes:
                p.wait()
        raise
    wall = time.time() - started
    rc = next((codes[p.pid] for p in procs if codes[p.pid] != 0), 0)
    stats = read_stats(stats_path) if stats_path is not None else None
    if rc != 0 and log is None:
        errlog.seek(0)
        text = errlog.read()
        refusals = [line for line in text.splitlines() if line.startswith("streamml: refused:")]
        if refusals:
            sys.stderr.write(refusals[0] + "\n")
        else:
            sys.stderr.write(text[-8000:])
    return RunResult(rc, (stats or {}).get("counters", {}), wall, cpu, peak, peak_sum)


def event_progress(bar) -> Callable[[dict[str, Any], float], None]:
    """Return a progress callback that shows a feature flow's counters on `bar`."""

    def progress(counters: dict[str, Any], elapsed: float) -> None:
        read = counters.get("read", 0)
        bar.update(
            f"{elapsed:6.1f}s  read {human(read)}  accepted {human(counters.get('accepted', 0))}"
            f"  dead {human(counters.get('dead', 0))}  alerts {human(counters.get('alerts', 0))}"
            f"  {human(read / max(elapsed, 1e-9))} events/s"
        )

    return progress


def report_run(
    command: str, result: RunResult, rows: list[tuple[str, str]], *, as_json: bool
) -> int:
    """Print how a flow's command (e.g. ``run error-count``) ended; return the exit code."""
    if result.returncode == REFUSED_EXIT:
        print(f"streamml {command}: the run was refused (see above)", file=sys.stderr)
        return 2
    if result.returncode != 0:
        print(f"streamml {command}: the flow failed (exit {result.returncode})", file=sys.stderr)
        return 1
    if as_json:
        import orjson

        body = {
            "counters": result.counters,
            "wall_s": result.wall_s,
            "cpu_s": result.cpu_s,
            "peak_rss_bytes": result.peak_rss_bytes,
        }
        print(orjson.dumps(body).decode())
    else:
        print(format_table(rows, headers=[command.split()[-1], "value"]))
    return 0


def cost_rows(result: RunResult, rate_name: str, count: int) -> list[tuple[str, str]]:
    """Return the summary rows of what a run cost: wall time, `count` per second, CPU, RSS."""
    return [
        ("wall seconds", f"{result.wall_s:.2f}"),
        (rate_name, human(count / max(result.wall_s, 1e-9))),
        ("CPU seconds", f"{result.cpu_s:.2f}"),
        ("peak RSS MiB", f"{result.peak_rss_bytes / 2**20:.0f}"),
    ]
