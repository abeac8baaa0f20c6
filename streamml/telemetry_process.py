"""`streamml telemetry serve` as a subprocess, for tests and demos that want a separate process.

`start_telemetry_process(config)` starts the command on the config's port (0: a free one),
returns once it printed its URL, and stops it with SIGINT like Ctrl-C does.
"""

from __future__ import annotations

import collections
import re
import subprocess
import sys
import threading
from types import TracebackType

from streamml.processes import die_with_parent, interrupt
from streamml.telemetry import TelemetryConfig

__all__ = ["TelemetryProcess", "start_telemetry_process"]

_URL = re.compile(r"http://\S+")


class TelemetryProcess:
    """`streamml telemetry serve` running as a subprocess; a context manager that stops it."""

    def __init__(self, proc: subprocess.Popen[str], url: str, lines: collections.deque[str]):
        self._proc = proc
        self.url = url
        self._lines = lines

    @property
    def pid(self) -> int:
        """Process id of the service."""
        return self._proc.pid

    def output(self) -> str:
        """Return what the process printed so far (its last 200 lines)."""
        return "".join(self._lines)

    def stop(self, timeout: float = 10.0) -> int:
        """Stop the process (SIGINT, then SIGKILL after `timeout`); return its exit code."""
        return interrupt(self._proc, timeout)

    def __enter__(self) -> TelemetryProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _args(config: TelemetryConfig) -> list[str]:
    return [
        *("--host", config.host, "--port", str(config.port)),
        *("--latency-ms", repr(config.latency_ms), "--jitter-ms", repr(config.jitter_ms)),
        *("--failure-rate", repr(config.failure_rate), "--seed", str(config.seed)),
    ]


def start_telemetry_process(
    config: TelemetryConfig | None = None, *, timeout: float = 30.0
) -> TelemetryProcess:
    """Run `streamml telemetry serve` in a subprocess; return once it printed its URL."""
    config = config or TelemetryConfig()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamml.cli", "telemetry", "serve", *_args(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        stdin=subprocess.DEVNULL,
        preexec_fn=die_with_parent if sys.platform == "linux" else None,
    )
    lines: collections.deque[str] = collections.deque(maxlen=200)
    found: list[str] = []
    ready = threading.Event()

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            match = _URL.search(line)
            if match and not found:
                found.append(match.group(0))
                ready.set()
        ready.set()

    threading.Thread(target=drain, name="streamml-telemetry-output", daemon=True).start()
    ready.wait(timeout)
    if not found:
        proc.kill()
        proc.wait()
        raise RuntimeError(
            f"streamml telemetry serve printed no URL within {timeout}s (exit code "
            f"{proc.returncode}); its output:\n{''.join(lines) or '(none)'}"
        )
    return TelemetryProcess(proc, found[0], lines)
