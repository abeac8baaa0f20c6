"""Running the REST service: in this process (uvicorn or granian), or as a child process.

`serve(config)` runs until interrupted, with `config.workers` worker processes (each opens
its own stores; the rate limit and the deduplication of request ids are per worker).
`ServerThread` runs one worker in a thread of this process (tests); `start_server_process`
starts ``python -m streamml.server`` and waits until it answers `/healthz` (benchmarks).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from streamml.server.config import CONFIG_ENV, ServeConfig

__all__ = [
    "ServerProcess",
    "ServerThread",
    "check_paths",
    "free_port",
    "serve",
    "start_server_process",
]

_FACTORY = "streamml.server.app:app_from_env"


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port free on `host` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_paths(config: ServeConfig) -> None:
    """Raise ValueError when the state dir holds no state or the registry is not a directory."""
    from streamml.state.layout import StateLayout

    if StateLayout.read(config.state_dir) is None:
        raise ValueError(
            f"{config.state_dir} holds no feature state (no streamml-state.json); run a feature "
            "flow (`streamml run error-count --state-dir DIR ...`) into it first"
        )
    if not config.registry_dir.is_dir():
        raise ValueError(f"model registry {config.registry_dir} is not a directory")


def serve(config: ServeConfig) -> None:
    """Serve `config` until interrupted (Ctrl-C or SIGTERM)."""
    os.environ[CONFIG_ENV] = config.to_json().decode()
    multiproc = None
    if config.workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiproc = tempfile.TemporaryDirectory(prefix="streamml-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = multiproc.name
    try:
        if config.http == "granian":
            from granian import Granian
            from granian.constants import Interfaces, Loops

            Granian(
                _FACTORY,
                address=config.host,
                port=config.port,
                interface=Interfaces.ASGI,
                workers=config.workers,
                loop=Loops.uvloop,
                factory=True,
                log_access=False,
            ).serve()
        else:
            import uvicorn

            uvicorn.run(
                _FACTORY,
                factory=True,
                host=config.host,
                port=config.port,
                workers=config.workers,
                loop="uvloop",
                http="httptools",
                lifespan="on",
                access_log=False,
                log_level="warning",
            )
    finally:
        if multiproc is not None:
            multiproc.cleanup()


class ServerThread:
    """One uvicorn worker serving `app` on a thread of this process; a context manager."""

    def __init__(self, app, host: str = "127.0.0.1", port: int | None = None) -> None:
        import uvicorn

        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        config = uvicorn.Config(
            app,
            host=host,
            port=self.port,
            loop="asyncio",
            http="httptools",
            lifespan="on",
            access_log=False,
            log_level="warning",
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, name="streamml-serve", daemon=True)

    def _run(self) -> None:
        asyncio.run(self.server.serve())

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the REST service did not start (see its log above)")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@dataclass(frozen=True)
class ServerProcess:
    """A service started by `start_server_process`: its base URL and process id."""

    url: str
    pid: int


@contextmanager
def start_server_process(config: ServeConfig, timeout_s: float = 60.0) -> Iterator[ServerProcess]:
    """Run `serve(config)` in a child process; yield it once `/healthz` answers."""
    if config.port == 0:
        config = replace(config, port=free_port(config.host))
    url = f"http://{config.host}:{config.port}"
    env = {**os.environ, CONFIG_ENV: config.to_json().decode()}
    proc = subprocess.Popen([sys.executable, "-m", "streamml.server"], env=env)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the REST service exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the REST service did not answer on {url} in {timeout_s} s")
            time.sleep(0.05)
        yield ServerProcess(url, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
