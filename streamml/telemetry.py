"""The stand-in device-telemetry service: a real HTTP server answering each account's telemetry.

`GET /v1/telemetry/{account}` answers the account's `telemetry_document` (JSON) after a simulated
latency (`latency_ms` +- `jitter_ms`, awaited with `asyncio.sleep`, so slow answers never block
each other); a seeded fraction `failure_rate` of them answers HTTP 503 with a JSON error instead.
An empty account or one over 256 UTF-8 bytes answers 400. `GET /healthz` answers at once.

`start_telemetry_server(config)` runs it on a background thread with its own event loop (port 0:
a free loopback port) and returns a context manager with `.url`; `streamml telemetry serve` runs
it in the foreground (`streamml.telemetry_process` starts that command as a subprocess).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from aiohttp import web

__all__ = [
    "TelemetryConfig",
    "TelemetryServer",
    "TelemetryStats",
    "build_app",
    "register",
    "start_telemetry_server",
]

MAX_ACCOUNT_BYTES = 256
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class TelemetryConfig:
    """How the telemetry service listens and misbehaves.

    `seed` draws the account profiles (use the request generator's seed to answer its truth)
    and the sequence of latencies and failures, in the order requests arrive.
    """

    host: str = "127.0.0.1"
    port: int = 0
    latency_ms: float = 20.0
    jitter_ms: float = 10.0
    failure_rate: float = 0.05
    seed: int = 7

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.port <= 65535:
            problems.append(f"port in 0..65535 (got {self.port})")
        if not (math.isfinite(self.latency_ms) and self.latency_ms >= 0):
            problems.append(f"latency_ms >= 0 (got {self.latency_ms})")
        if not (math.isfinite(self.jitter_ms) and self.jitter_ms >= 0):
            problems.append(f"jitter_ms >= 0 (got {self.jitter_ms})")
        if not 0.0 <= self.failure_rate <= 1.0:
            problems.append(f"failure_rate in [0, 1] (got {self.failure_rate})")
        if problems:
            raise ValueError("telemetry service needs " + ", ".join(problems))


@dataclass
class TelemetryStats:
    """Counts of answers since the server started: documents, simulated failures, bad requests."""

    served: int = 0
    failed: int = 0
    rejected: int = 0


class _Chaos:
    """The seeded sequence of latencies and failures, drawn in arrival order."""

    def __init__(self, config: TelemetryConfig) -> None:
        self.config = config
        self.rng = random.Random(f"streamml-telemetry:{config.seed}")

    def draw(self) -> tuple[float, bool]:
        c = self.config
        delay_ms = c.latency_ms + self.rng.uniform(-c.jitter_ms, c.jitter_ms)
        return max(delay_ms, 0.0) / 1000.0, self.rng.random() < c.failure_rate


def build_app(config: TelemetryConfig, stats: TelemetryStats | None = None) -> web.Application:
    """Build the aiohttp application of the telemetry service (counting answers in `stats`)."""
    from aiohttp import web  # here, so `streamml telemetry --help` loads neither of them

    from streamml.onnx_models.speedtests import account_profile, telemetry_document

    def _json(status: int, body: object) -> web.Response:
        return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")

    app = web.Application()
    counts = stats or TelemetryStats()
    chaos = _Chaos(config)

    async def telemetry(request: web.Request) -> web.Response:
        account = request.match_info.get("account", "")
        size = len(account.encode("utf-8", errors="surrogatepass"))
        if not account or size > MAX_ACCOUNT_BYTES:
            counts.rejected += 1
            detail = "account is empty" if not account else f"account is {size} bytes"
            return _json(
                400,
                {"error": "bad_account", "detail": f"{detail}; expected 1..256 UTF-8 bytes"},
            )
        delay, fail = chaos.draw()
        await asyncio.sleep(delay)
        if fail:
            counts.failed += 1
            return _json(
                503,
                {"error": "unavailable", "detail": "simulated failure, retry later"},
            )
        counts.served += 1
        return _json(200, telemetry_document(account_profile(config.seed, account)))

    async def healthz(request: web.Request) -> web.Response:
        return _json(200, {"status": "ok"})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/telemetry/{account}", telemetry)
    app.router.add_get("/v1/telemetry/", telemetry)
    app.router.add_get("/v1/telemetry", telemetry)
    return app


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class TelemetryServer:
    """The telemetry service running on a background thread; a context manager that stops it."""

    def __init__(self, config: TelemetryConfig) -> None:
        self.config = config
        self.stats = TelemetryStats()
        self.host = config.host
        self.port = config.port
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="streamml-telemetry", daemon=True)

    @property
    def url(self) -> str:
        """Base URL of the service, e.g. `http://127.0.0.1:PORT`."""
        return _url(self.host, self.port)

    def start(self, timeout: float = 10.0) -> TelemetryServer:
        """Start serving and return once the port is bound; raise `OSError` if it cannot bind."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"telemetry service did not start within {timeout}s")
        if self._error is not None:
            self._thread.join(timeout)
            raise self._error
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()
            self._loop.close()

    async def _serve(self) -> None:
        from aiohttp import web

        self._stop = asyncio.Event()
        runner = web.AppRunner(
            build_app(self.config, self.stats),
            access_log=None,
            handle_signals=False,
            shutdown_timeout=5.0,
        )
        await runner.setup()
        try:
            family = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)[0][0]
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.host, self.port))
            except OSError:
                sock.close()
                raise
            await web.SockSite(runner, sock).start()
            self.port = int(sock.getsockname()[1])
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def running(self) -> bool:
        """Whether the server thread is still serving."""
        return self._thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving (in-flight answers get up to 5 s) and join the thread; idempotent."""
        if self._thread.is_alive() and self._stop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread.ident is not None:
            self._thread.join(timeout)

    def __enter__(self) -> TelemetryServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"TelemetryServer(url={self.url!r}, {'running' if self.running() else 'stopped'})"


def start_telemetry_server(config: TelemetryConfig | None = None) -> TelemetryServer:
    """Start the telemetry service on a background thread; return it once it listens.

    The result is a context manager; `.url` is its base URL (`config.port=0`, the default,
    picks a free port). Raises `OSError` when the address cannot be bound.
    """
    return TelemetryServer(config or TelemetryConfig()).start()


def _serve(args: argparse.Namespace) -> int:
    try:
        config = TelemetryConfig(
            host=args.host,
            port=args.port,
            latency_ms=args.latency_ms,
            jitter_ms=args.jitter_ms,
            failure_rate=args.failure_rate,
            seed=args.seed,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in _STOP_SIGNALS}
    try:
        return _run_foreground(config, stop)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_foreground(config: TelemetryConfig, stop: threading.Event) -> int:
    try:
        server = start_telemetry_server(config)
    except OSError as exc:
        print(f"error: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 1
    started = time.monotonic()
    with server:
        print(f"telemetry service listening on {server.url}", flush=True)
        print(f"  GET {server.url}/v1/telemetry/ACCOUNT  (and /healthz)")
        print(
            f"  latency {config.latency_ms:g} +- {config.jitter_ms:g} ms, failure rate "
            f"{config.failure_rate:g}, seed {config.seed}; Ctrl-C stops it",
            flush=True,
        )
        while not stop.wait(0.5):
            if not server.running():
                print("error: the telemetry service stopped unexpectedly", file=sys.stderr)
                return 1
    s = server.stats
    print(
        f"stopped after {time.monotonic() - started:.1f}s: {s.served} documents, "
        f"{s.failed} simulated failures (503), {s.rejected} bad requests (400)",
        flush=True,
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `telemetry` subcommand to the top-level `streamml` subparsers."""
    p = sub.add_parser(
        "telemetry",
        help="run the stand-in device-telemetry service (HTTP) the prediction flow calls",
        description="The stand-in device-telemetry service of the speed-test demo.",
    )
    tsub = p.add_subparsers(dest="telemetry_command", metavar="SUBCOMMAND", required=True)
    serve = tsub.add_parser(
        "serve",
        help="serve GET /v1/telemetry/ACCOUNT until Ctrl-C",
        description=(
            "Serve each account's device telemetry (wifi devices, modem, network node) as JSON at "
            "GET /v1/telemetry/ACCOUNT, drawn from the same seeded account profiles as the "
            "generated speed-test requests, with a simulated latency and failure rate. "
            "Prints its URL, stops on Ctrl-C."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8081, help="TCP port (0 picks a free one)")
    serve.add_argument(
        "--latency-ms", type=float, default=20.0, help="mean simulated latency per answer"
    )
    serve.add_argument(
        "--jitter-ms", type=float, default=10.0, help="latency varies uniformly by +- this much"
    )
    serve.add_argument(
        "--failure-rate",
        type=float,
        default=0.05,
        help="fraction of telemetry answers that are HTTP 503 (0..1)",
    )
    serve.add_argument(
        "--seed",
        type=int,
        default=7,
        help="seed of the account profiles (match the request generator's) and of the failures",
    )
    serve.set_defaults(func=_serve)
