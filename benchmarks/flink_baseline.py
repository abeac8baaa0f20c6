"""Apache Flink SQL baseline for ``streamml bench error-count``, run in its own virtualenv.

PyFlink (``apache-flink`` on PyPI) pins old pyarrow/pandas and pulls in Apache Beam, so it must
never be installed into the project's ``.venv``. It lives in ``.venv-flink`` at the repository
root, created on explicit request by :func:`ensure_flink_venv` (or ``make flink``), and the job in
``benchmarks/flink_job.py`` is run there as a subprocess that prints one JSON line. This module
does not import pyflink and is safe to import from the main environment.

The Flink job is the same computation as our rolling error count: HOP windows (24 h size, 1 h
slide by default) over event time ``ts``, ``COUNT(*)`` per account and window, keeping the
windows with ``COUNT(*) > threshold``; ``FlinkResult.alert_windows`` is the number of such
``(account, window)`` pairs. See the docstring of ``flink_job.py`` for how job start-up is
excluded from ``events_per_s``.

``benchmarks/flink_checks.py`` runs it checked, as ``streamml bench error-count --flink`` does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "FLINK_JOB",
    "FLINK_PACKAGE",
    "FLINK_VENV",
    "FlinkError",
    "FlinkResult",
    "FlinkUnavailableError",
    "ensure_flink_venv",
    "flink_available",
    "flink_python",
    "run_flink_sql",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
FLINK_VENV = REPO_ROOT / ".venv-flink"
FLINK_JOB = Path(__file__).resolve().with_name("flink_job.py")
FLINK_PACKAGE = "apache-flink==2.3.0"


def _create_hint() -> str:
    """Return the instructions for creating the Flink virtualenv."""
    return (
        "create it with `make flink`, or: "
        f"python3.11 -m venv {FLINK_VENV} && {FLINK_VENV}/bin/python -m pip install "
        f"'{FLINK_PACKAGE}' (about 1 minute, ~850 MB; needs Java 11+ on PATH)"
    )


class FlinkError(RuntimeError):
    """The Flink baseline job failed or printed no result."""


class FlinkUnavailableError(FlinkError):
    """The Flink virtualenv (or Java) is missing."""


@dataclass(frozen=True)
class FlinkResult:
    """Result of one Flink baseline run (the JSON line printed by ``flink_job.py``).

    ``events_per_s`` excludes job start-up (``events / seconds_excluding_startup``);
    ``events_per_s_total`` does not. ``wall_seconds_process`` is the whole subprocess, JVM
    start-up, warm-up runs and the count check included.
    """

    events: int
    alert_windows: int
    seconds_total: float
    seconds_startup: float
    seconds_excluding_startup: float
    events_per_s: float
    parallelism: int
    flink_version: str
    events_per_s_total: float | None = None
    seconds_jvm_start: float | None = None
    seconds_cold_first_job: float | None = None
    seconds_startup_runs: tuple[float, ...] = ()
    jvm_cpu_seconds: float | None = None
    events_read_by_flink: int | None = None
    rows_behind_watermark: int | None = None
    wall_seconds_process: float | None = None


def flink_python() -> Path:
    """Return the path of the Flink virtualenv's interpreter (it may not exist)."""
    return FLINK_VENV / "bin" / "python"


def flink_available() -> bool:
    """Return whether ``.venv-flink`` exists, imports pyflink, and ``java`` is on PATH."""
    python = flink_python()
    if not python.exists() or shutil.which("java") is None:
        return False
    try:
        probe = subprocess.run(
            [str(python), "-c", "import pyflink.version"],
            capture_output=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def ensure_flink_venv(progress: Callable[[str], object] = print) -> Path:
    """Create ``.venv-flink`` with PyFlink if it is not usable yet; return its directory.

    Takes about a minute with a PyPI mirror close by (~850 MB on disk). A partially created
    virtualenv is removed again when the installation fails.
    """
    if flink_available():
        return FLINK_VENV
    if shutil.which("java") is None:
        raise FlinkUnavailableError("PyFlink needs a Java runtime (11+) on PATH; none found")
    base = shutil.which("python3.11") or sys.executable
    created = not FLINK_VENV.exists()
    start = time.monotonic()
    try:
        if created:
            progress(f"creating {FLINK_VENV} with {base}")
            subprocess.run([base, "-m", "venv", str(FLINK_VENV)], check=True)
        progress(f"installing {FLINK_PACKAGE} into {FLINK_VENV} (takes about a minute)")
        subprocess.run(
            [str(flink_python()), "-m", "pip", "install", "--quiet", FLINK_PACKAGE],
            check=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        if created:
            shutil.rmtree(FLINK_VENV, ignore_errors=True)
        raise FlinkUnavailableError(f"could not create {FLINK_VENV}: {exc}") from exc
    if not flink_available():
        raise FlinkUnavailableError(f"{FLINK_VENV} was created but cannot import pyflink")
    progress(f"{FLINK_VENV} ready in {time.monotonic() - start:.0f} s")
    return FLINK_VENV


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """Kill ``proc`` and its children (the JVM), which run in their own session."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        proc.kill()


def run_flink_sql(
    csv_path: Path,
    *,
    window_ms: int = 86_400_000,
    slide_ms: int = 3_600_000,
    threshold: int = 2000,
    parallelism: int = 1,
    timeout_s: float = 1800,
    out_of_orderness_ms: int = 0,
    count_check: bool = True,
    object_reuse: bool = True,
    extra_conf: Mapping[str, str] | None = None,
    output_dir: Path | None = None,
) -> FlinkResult:
    """Run the Flink SQL HOP-window error count on ``csv_path`` and return its measurements.

    ``csv_path`` has the header ``account,ts,code`` (``ts`` in epoch milliseconds, ideally in
    time order: rows more than ``out_of_orderness_ms`` behind the newest one may be dropped as
    late, see ``FlinkResult.rows_behind_watermark``). ``count_check`` adds an untimed Flink
    batch ``COUNT(*)`` of the file (``events_read_by_flink``). Raises
    :class:`FlinkUnavailableError` when ``.venv-flink`` is missing and :class:`FlinkError`
    when the job fails or exceeds ``timeout_s``. With ``output_dir`` (which must not exist) the
    alert windows the job wrote are kept there (:func:`read_alert_windows` reads them).
    """
    if not flink_python().exists():
        raise FlinkUnavailableError(f"Flink virtualenv {FLINK_VENV} is missing; {_create_hint()}")
    csv_path = Path(csv_path).resolve()
    if not csv_path.is_file():
        raise FileNotFoundError(csv_path)
    cmd = [
        str(flink_python()),
        str(FLINK_JOB),
        "--input",
        str(csv_path),
        "--window-ms",
        str(int(window_ms)),
        "--slide-ms",
        str(int(slide_ms)),
        "--threshold",
        str(int(threshold)),
        "--parallelism",
        str(int(parallelism)),
        "--out-of-orderness-ms",
        str(int(out_of_orderness_ms)),
    ]
    if output_dir is not None:
        cmd += ["--output-dir", str(Path(output_dir).resolve())]
    if not count_check:
        cmd.append("--no-count-check")
    if not object_reuse:
        cmd.append("--no-object-reuse")
    for key, value in (extra_conf or {}).items():
        cmd += ["--conf", f"{key}={value}"]

    start = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(REPO_ROOT),
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.communicate()
        raise FlinkError(f"Flink baseline exceeded {timeout_s} s and was killed") from None
    except BaseException:
        _kill_group(proc)
        proc.communicate()
        raise
    wall = time.monotonic() - start
    if proc.returncode != 0:
        tail = "\n".join(stderr.strip().splitlines()[-30:])
        raise FlinkError(f"Flink baseline failed (exit {proc.returncode}):\n{tail}")
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise FlinkError(f"Flink baseline printed no JSON result; stdout was: {stdout[-2000:]!r}")
    data = json.loads(lines[-1])
    fields = set(FlinkResult.__dataclass_fields__)
    kwargs = {key: value for key, value in data.items() if key in fields}
    kwargs["seconds_startup_runs"] = tuple(kwargs.get("seconds_startup_runs", ()))
    kwargs["wall_seconds_process"] = round(wall, 3)
    return FlinkResult(**kwargs)
