"""Helper processes (broker, telemetry, flows): tied to their parent, stopped like Ctrl-C."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys

__all__ = ["die_with_parent", "interrupt"]


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when the process that started it dies (a preexec_fn)."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def interrupt(proc: subprocess.Popen, timeout: float) -> int:
    """Stop `proc` like Ctrl-C (SIGINT), then SIGKILL after `timeout` s; return its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
    return int(proc.returncode)
