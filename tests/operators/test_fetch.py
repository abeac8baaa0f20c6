"""AsyncFetcher against a real aiohttp server on loopback."""

from __future__ import annotations

import asyncio
import gc
import socket
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import orjson
import pytest
from aiohttp import web
from streamml.operators.fetch import LOOP_THREAD_NAME, AsyncFetcher, FetchConfig, FetchResult


@dataclass
class Step:
    """One answer of the test server: wait `delay_s`, then answer `status` with `body`."""

    delay_s: float = 0.0
    status: int = 200
    body: bytes | None = None


@dataclass
class TelemetryServer:
    """A loopback HTTP server with per-key scripted answers, counting calls and concurrency."""

    plans: dict[str, list[Step]] = field(default_factory=dict)
    calls: Counter = field(default_factory=Counter)
    active: int = 0
    max_active: int = 0
    url: str = ""

    def plan(self, key: str, *steps: Step) -> None:
        """Answer the calls for `key` with `steps` in turn, repeating the last one."""
        self.plans[key] = list(steps)

    async def handle(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        self.calls[key] += 1
        steps = self.plans.get(key, [Step()])
        step = steps[min(self.calls[key], len(steps)) - 1]
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await asyncio.sleep(step.delay_s)
        finally:
            self.active -= 1
        body = step.body
        if body is None:
            body = orjson.dumps({"account": key, "call": self.calls[key]})
        return web.Response(status=step.status, body=body, content_type="application/json")


@pytest.fixture
def server():
    srv = TelemetryServer()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder = {}

    async def start():
        app = web.Application()
        app.router.add_get("/v1/telemetry/{key}", srv.handle)
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        holder["runner"] = runner
        srv.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"

    def run():
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        started.set()
        loop.run_forever()
        loop.run_until_complete(holder["runner"].cleanup())
        loop.close()

    thread = threading.Thread(target=run, name="test-telemetry-server", daemon=True)
    thread.start()
    assert started.wait(10)
    yield srv
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def loop_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == LOOP_THREAD_NAME]


@pytest.fixture
def fetchers():
    made: list[AsyncFetcher] = []

    def make(base_url: str, clock=None, **kw) -> AsyncFetcher:
        config = FetchConfig(base_url, **{"jitter_seed": 7, "backoff_ms": 5, **kw})
        f = AsyncFetcher(config) if clock is None else AsyncFetcher(config, clock=clock)
        made.append(f)
        return f

    yield make
    for f in made:
        f.close()
    assert not loop_threads()


def collect(fetcher: AsyncFetcher, n: int, timeout_s: float = 10.0) -> list[FetchResult]:
    """Poll until `n` results came (fail after `timeout_s`)."""
    out: list[FetchResult] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(out)} of {n} results after {timeout_s} s"
        fetcher.wait_for_results(left)
        out += fetcher.poll()
    assert len(out) == n
    return out


def test_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="must contain"):
        FetchConfig("http://x", url_template="{base}/v1")
    with pytest.raises(ValueError, match="max_in_flight"):
        FetchConfig("http://x", max_in_flight=0)
    with pytest.raises(ValueError, match="backoff"):
        FetchConfig("http://x", backoff_ms=100, backoff_cap_ms=10)
    assert FetchConfig("http://h/").url("a/b c") == "http://h/v1/telemetry/a%2Fb%20c"


def test_fetch_returns_the_document_with_its_metadata(server, fetchers):
    f = fetchers(server.url, clock=lambda: 1_700_000_000_000)
    f.submit("acct/1 é", "req-1")
    (r,) = collect(f, 1)
    assert r.ok and r.error is None and r.status == 200 and r.attempts == 1
    assert r.key == "acct/1 é" and r.tokens == ("req-1",)
    assert r.document == {"account": "acct/1 é", "call": 1}
    assert orjson.loads(r.body) == r.document
    assert r.fetched_at_ms == 1_700_000_000_000
    assert 0 < r.started_ns <= r.finished_ns
    assert server.calls == {"acct/1 é": 1}
    assert f.pending() == 0 and f.in_flight() == {} and f.poll() == []


def test_concurrent_submits_of_one_key_share_one_call(server, fetchers):
    server.plan("hot", Step(delay_s=0.2))
    f = fetchers(server.url)
    for i in range(100):
        f.submit("hot", i)
    assert f.in_flight() == {"hot": tuple(range(100))}
    (r,) = collect(f, 1)
    assert r.ok and r.tokens == tuple(range(100))
    assert server.calls["hot"] == 1
    m = f.metrics()
    assert (m.fetches, m.calls, m.deduplicated) == (1, 1, 99)
    f.submit("hot", "again")
    (r2,) = collect(f, 1)
    assert r2.tokens == ("again",) and r2.document["call"] == 2


def test_calls_in_flight_are_bounded(server, fetchers):
    keys = [f"k{i}" for i in range(20)]
    for k in keys:
        server.plan(k, Step(delay_s=0.05))
    f = fetchers(server.url, max_in_flight=4)
    for k in keys:
        f.submit(k, k)
    results = collect(f, 20)
    assert sorted(r.key for r in results) == sorted(keys)
    assert all(r.ok for r in results)
    assert server.max_active == 4
    assert f.metrics().max_in_flight == 4


def test_timeouts_are_retried_until_an_answer_comes(server, fetchers):
    server.plan("slow", Step(delay_s=0.5), Step(delay_s=0.5), Step())
    f = fetchers(server.url, timeout_ms=60, max_attempts=3)
    f.submit("slow", 1)
    (r,) = collect(f, 1)
    assert r.ok and r.attempts == 3 and r.document["call"] == 3
    m = f.metrics()
    assert (m.calls, m.retries, m.timeouts, m.failures) == (3, 2, 2, 0)
    assert server.calls["slow"] == 3


def test_retries_end_in_a_failure_after_max_attempts(server, fetchers):
    server.plan("down", Step(status=503))
    server.plan("busy", Step(status=429), Step())
    f = fetchers(server.url, max_attempts=4)
    f.submit("down", "a")
    f.submit("busy", "b")
    by_key = {r.key: r for r in collect(f, 2)}
    down = by_key["down"]
    assert not down.ok and down.document is None
    assert down.attempts == 4 and down.status == 503
    assert down.error == "gave up after 4 attempts: HTTP 503"
    assert server.calls["down"] == 4
    assert by_key["busy"].ok and by_key["busy"].attempts == 2
    assert f.metrics().failures == 1


def test_client_errors_are_not_retried(server, fetchers):
    server.plan("gone", Step(status=404, body=b'{"error":"no such account"}'))
    f = fetchers(server.url)
    f.submit("gone", 1)
    (r,) = collect(f, 1)
    assert not r.ok and r.attempts == 1 and r.status == 404 and r.error == "HTTP 404"
    assert r.body == b'{"error":"no such account"}'
    assert server.calls["gone"] == 1


def test_answers_that_are_not_json_objects_fail(server, fetchers):
    server.plan("html", Step(body=b"<html>oops</html>"))
    server.plan("list", Step(body=b"[1, 2]"))
    server.plan("big", Step(body=b'{"x": "' + b"y" * 2000 + b'"}'))
    f = fetchers(server.url, max_body_bytes=1000)
    for k in ("html", "list", "big"):
        f.submit(k, k)
    by_key = {r.key: r for r in collect(f, 3)}
    assert not by_key["html"].ok and by_key["html"].error.startswith("invalid JSON")
    assert by_key["html"].body == b"<html>oops</html>" and by_key["html"].status == 200
    assert by_key["list"].error == "expected a JSON object, got list"
    assert by_key["big"].error == "body larger than 1000 bytes"
    assert all(r.attempts == 1 for r in by_key.values())
    assert dict(server.calls) == {"html": 1, "list": 1, "big": 1}


def test_connection_errors_are_retried(fetchers):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    f = fetchers(f"http://127.0.0.1:{port}", max_attempts=2)
    f.submit("x", 1)
    (r,) = collect(f, 1)
    assert not r.ok and r.attempts == 2 and r.status is None
    assert r.error.startswith("gave up after 2 attempts: ClientConnectorError")


def test_submit_never_waits_for_the_server(server, fetchers):
    keys = [f"s{i}" for i in range(50)]
    for k in keys:
        server.plan(k, Step(delay_s=0.2))
    f = fetchers(server.url)
    durations = []
    t0 = time.perf_counter()
    for k in keys:
        start = time.perf_counter_ns()
        f.submit(k, k)
        durations.append(time.perf_counter_ns() - start)
    elapsed = time.perf_counter() - t0
    assert f.poll() == [] and f.pending() == 50
    assert elapsed < 0.2
    assert statistics.median(durations) < 1_000_000
    assert max(durations) < 20_000_000
    assert not f.wait_for_results(0.01)
    assert len(collect(f, 50)) == 50


def test_in_flight_keeps_completed_results_until_polled(server, fetchers):
    server.plan("slow", Step(delay_s=5))
    f = fetchers(server.url)
    f.submit("fast", "t1")
    f.submit("slow", "t2")
    assert f.wait_for_results(5)
    assert f.in_flight() == {"fast": ("t1",), "slow": ("t2",)}
    assert [r.key for r in f.poll()] == ["fast"]
    assert f.in_flight() == {"slow": ("t2",)} and f.pending() == 1


def test_close_cancels_calls_and_leaves_no_thread(server):
    server.plan("slow", Step(delay_s=5))
    before = set(threading.enumerate())
    a = AsyncFetcher(FetchConfig(server.url))
    b = AsyncFetcher(FetchConfig(server.url))
    assert len(loop_threads()) == 1
    a.submit("slow", 1)
    b.submit("slow", 2)
    deadline = time.monotonic() + 5
    while server.active < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert server.active == 2
    a.close()
    assert len(loop_threads()) == 1
    t0 = time.monotonic()
    b.close()
    assert time.monotonic() - t0 < 2
    assert set(threading.enumerate()) == before and not loop_threads()
    assert a.closed and a.poll() == [] and a.pending() == 0
    with pytest.raises(RuntimeError, match="closed"):
        a.submit("x", 1)
    a.close()
    deadline = time.monotonic() + 5
    while server.active and time.monotonic() < deadline:
        time.sleep(0.005)
    assert server.active == 0


def test_a_dropped_fetcher_releases_the_loop_thread(server):
    f = AsyncFetcher(FetchConfig(server.url))
    f.submit("x", 1)
    (thread,) = loop_threads()
    del f
    gc.collect()
    thread.join(5)
    assert not thread.is_alive()
