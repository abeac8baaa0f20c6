"""Helper processes (broker, telemetry, flows): tied to their parent, stopped like Ctrl-C."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys

__all__ = ["die_with_parent", "interrupt", "stop_on_sigterm"]


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


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def stop_on_sigterm() -> None:
    """Make SIGTERM stop this process like Ctrl-C (KeyboardInterrupt), from the main thread.

    A container runtime or a supervisor stops a command with SIGTERM; as a container's first
    process (PID 1) it would be ignored. `streamml run` then interrupts its workers and waits
    for them, as on Ctrl-C, instead of leaving them running.
    """
    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGTERM, _sigterm)
