"""Asynchronous HTTP fetches of per-key JSON documents, driven from a synchronous caller.

Bytewax has no asynchronous operator, so `AsyncFetcher` runs the calls on an asyncio event loop in
a background thread and the dataflow thread only hands keys over and collects results:
`submit` and `poll` never wait for the network. One loop thread is shared by every fetcher of a
process and stops when the last one is closed; each fetcher has its own `aiohttp.ClientSession`
(pooled keep-alive connections), its own bound on concurrent calls and its own results.

A key has at most one call in flight: a second `submit` of a key already in flight only adds its
token to the waiters, and the result carries every token. Keys beyond `max_in_flight` wait in a
queue inside the loop. Connection errors, timeouts, 5xx and 429 answers are retried with
exponential backoff and full jitter; other statuses and undecodable bodies fail at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace
from urllib.parse import quote

import aiohttp
import orjson
from yarl import URL

__all__ = [
    "LOOP_THREAD_NAME",
    "AsyncFetcher",
    "FetchConfig",
    "FetchMetrics",
    "FetchResult",
    "wall_clock_ms",
]

LOOP_THREAD_NAME = "streamml-fetch-loop"
"""Name of the thread running the event loop shared by the fetchers of a process."""


def wall_clock_ms() -> int:
    """Return the wall-clock time in epoch milliseconds."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class FetchConfig:
    """Where to fetch from and how hard to try.

    The URL of a key is ``url_template.format(base=base_url, key=quote(key, safe=""))``. A call is
    retried on connection errors, timeouts, 5xx and 429 until `max_attempts` calls were made,
    sleeping ``uniform(0, min(backoff_cap_ms, backoff_ms * 2**(attempt - 1)))`` ms between them
    (full jitter; `jitter_seed` makes the sleeps reproducible). Bodies above `max_body_bytes`
    fail without retry.
    """

    base_url: str
    url_template: str = "{base}/v1/telemetry/{key}"
    max_in_flight: int = 64
    timeout_ms: int = 500
    max_attempts: int = 3
    backoff_ms: int = 20
    backoff_cap_ms: int = 500
    jitter_seed: int | None = None
    max_body_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        if "{key}" not in self.url_template:
            raise ValueError(f"url_template must contain {{key}}, got {self.url_template!r}")
        for name in ("max_in_flight", "timeout_ms", "max_attempts", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.backoff_ms < 0 or self.backoff_cap_ms < self.backoff_ms:
            raise ValueError(
                f"backoff must satisfy 0 <= backoff_ms <= backoff_cap_ms, got "
                f"{self.backoff_ms} and {self.backoff_cap_ms}"
            )

    def url(self, key: str) -> str:
        """Return the URL fetched for `key` (the key percent-encoded, `/` included)."""
        return self.url_template.format(base=self.base_url.rstrip("/"), key=quote(key, safe=""))


@dataclass(frozen=True, slots=True)
class FetchResult:
    """The outcome of one fetch of `key`, answering every token submitted for it.

    `ok` results hold the decoded JSON object in `document` and the raw bytes in `body`.
    Failures hold the reason in `error`, the last HTTP status if any and the body if one came.
    `started_ns` and `finished_ns` are `time.monotonic_ns` readings around all attempts;
    `fetched_at_ms` is the fetcher's clock when the fetch ended.
    """

    key: str
    ok: bool
    document: dict | None
    body: bytes | None
    error: str | None
    status: int | None
    attempts: int
    started_ns: int
    finished_ns: int
    fetched_at_ms: int
    tokens: tuple[Hashable, ...]

    @property
    def latency_ms(self) -> float:
        """Milliseconds from the first call to the end of the fetch."""
        return (self.finished_ns - self.started_ns) / 1e6


@dataclass(frozen=True, slots=True)
class FetchMetrics:
    """Counters of one fetcher since it was created.

    `calls` counts HTTP requests (retries included), `fetches` keys fetched, `deduplicated`
    submits that joined a fetch already in flight, `max_in_flight` the most calls seen at once.
    """

    fetches: int = 0
    calls: int = 0
    retries: int = 0
    failures: int = 0
    timeouts: int = 0
    deduplicated: int = 0
    max_in_flight: int = 0


class _LoopThread:
    """An asyncio loop in a daemon thread, shared by the fetchers of a process."""

    _guard = threading.Lock()
    _shared: _LoopThread | None = None

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.users = 0
        self.thread = threading.Thread(target=self._run, name=LOOP_THREAD_NAME, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()

    @classmethod
    def acquire(cls) -> _LoopThread:
        with cls._guard:
            if cls._shared is None:
                cls._shared = cls()
            cls._shared.users += 1
            return cls._shared

    def release(self, *, join: bool) -> None:
        with self._guard:
            self.users -= 1
            last = self.users == 0
            if last and _LoopThread._shared is self:
                _LoopThread._shared = None
        if last:
            self.loop.call_soon_threadsafe(self.loop.stop)
            if join and threading.current_thread() is not self.thread:
                self.thread.join()


class _Core:
    """The state of a fetcher shared between the caller's thread and the loop."""

    def __init__(
        self,
        config: FetchConfig,
        clock: Callable[[], int],
        runner: _LoopThread,
        on_result: Callable[[], None] | None = None,
    ):
        self.config = config
        self.clock = clock
        self.on_result = on_result
        self.runner = runner
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.waiters: dict[str, list[Hashable]] = {}
        self.done: list[FetchResult] = []
        self.closed = False
        self.rng = random.Random(config.jitter_seed)
        self.counts = dict.fromkeys(FetchMetrics.__slots__, 0)
        self.active = 0
        self.queue: asyncio.Queue[str] | None = None
        self.workers: list[asyncio.Task] = []
        self.session: aiohttp.ClientSession | None = None

    # Loop side.
    def enqueue(self, key: str) -> None:
        if self.closed:
            return
        if self.queue is None:
            self.queue = asyncio.Queue()
            timeout = aiohttp.ClientTimeout(total=self.config.timeout_ms / 1000)
            connector = aiohttp.TCPConnector(limit=self.config.max_in_flight)
            self.session = aiohttp.ClientSession(connector=connector, timeout=timeout)
            loop = self.runner.loop
            self.workers = [
                loop.create_task(self._worker()) for _ in range(self.config.max_in_flight)
            ]
        self.queue.put_nowait(key)

    async def _worker(self) -> None:
        assert self.queue is not None
        while True:
            key = await self.queue.get()
            self.active += 1
            self.counts["max_in_flight"] = max(self.counts["max_in_flight"], self.active)
            started = time.monotonic_ns()
            try:
                result = await self._fetch(key, started)
            except Exception as exc:
                self.counts["failures"] += 1
                error = f"unexpected {type(exc).__name__}: {exc}"
                result = self._result(key, started, False, None, None, error, None, 0)
            finally:
                self.active -= 1
            self._publish(result)

    def _publish(self, result: FetchResult) -> None:
        with self.lock:
            tokens = tuple(self.waiters.pop(result.key, ()))
            self.done.append(replace(result, tokens=tokens))
            self.ready.set()
        if self.on_result is not None:
            self.on_result()

    async def _fetch(self, key: str, started: int) -> FetchResult:
        cfg = self.config
        self.counts["fetches"] += 1
        url = URL(cfg.url(key), encoded=True)
        attempt = 0
        while True:
            attempt += 1
            self.counts["calls"] += 1
            ok, retry, status, body, error, document = await self._call(url)
            if ok or not retry or attempt >= cfg.max_attempts:
                break
            self.counts["retries"] += 1
            ceiling = min(cfg.backoff_cap_ms, cfg.backoff_ms * 2 ** (attempt - 1))
            await asyncio.sleep(self.rng.uniform(0, ceiling) / 1000)
        if not ok:
            self.counts["failures"] += 1
            if retry:
                error = f"gave up after {attempt} attempt{'s' * (attempt > 1)}: {error}"
        return self._result(key, started, ok, document, body, error, status, attempt)

    def _result(self, key, started, ok, document, body, error, status, attempts) -> FetchResult:
        return FetchResult(
            key=key,
            ok=ok,
            document=document,
            body=body,
            error=error,
            status=status,
            attempts=attempts,
            started_ns=started,
            finished_ns=time.monotonic_ns(),
            fetched_at_ms=self.clock(),
            tokens=(),
        )

    async def _call(self, url: URL):
        """One HTTP call: ``(ok, retry, status, body, error, document)``."""
        assert self.session is not None
        limit = self.config.max_body_bytes
        status = None
        try:
            async with self.session.get(url) as resp:
                status = resp.status
                body = bytearray()
                async for chunk in resp.content.iter_any():
                    body += chunk
                    if len(body) > limit:
                        break
        except TimeoutError:
            self.counts["timeouts"] += 1
            return False, True, status, None, f"timeout after {self.config.timeout_ms} ms", None
        except (aiohttp.InvalidURL, ValueError) as exc:
            return False, False, status, None, f"invalid request: {exc}", None
        except aiohttp.ClientError as exc:
            return False, True, status, None, f"{type(exc).__name__}: {exc}", None
        if len(body) > limit:
            return False, False, status, None, f"body larger than {limit} bytes", None
        body = bytes(body)
        if status >= 500 or status == 429:
            return False, True, status, body, f"HTTP {status}", None
        if not 200 <= status < 300:
            return False, False, status, body, f"HTTP {status}", None
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return False, False, status, body, f"invalid JSON: {exc}", None
        if not isinstance(document, dict):
            kind = type(document).__name__
            return False, False, status, body, f"expected a JSON object, got {kind}", None
        return True, False, status, body, None, document

    async def aclose(self) -> None:
        for task in self.workers:
            task.cancel()
        await asyncio.gather(*self.workers, return_exceptions=True)
        if self.session is not None:
            await self.session.close()

    def shutdown(self, *, wait: bool, timeout_s: float = 5.0) -> None:
        """Cancel every call, close the session and release the loop (from any thread)."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            self.waiters.clear()
            self.done.clear()
        loop = self.runner.loop
        if wait and threading.current_thread() is not self.runner.thread:
            future = asyncio.run_coroutine_threadsafe(self.aclose(), loop)
            with contextlib.suppress(Exception):
                future.result(timeout_s)
            self.runner.release(join=True)
        else:
            loop.call_soon_threadsafe(lambda: loop.create_task(self._close_in_background()))

    async def _close_in_background(self) -> None:
        try:
            await self.aclose()
        finally:
            self.runner.release(join=False)


class AsyncFetcher:
    """Fetch JSON documents per key without blocking the calling thread.

    `submit` and `poll` may be called from any thread and never wait for the network;
    `wait_for_results` lets a caller sleep until something completes. A fetcher that is garbage
    collected without `close` releases its calls and session in the background. `clock` gives
    `FetchResult.fetched_at_ms` (epoch milliseconds) and is called on the loop thread.
    `on_result`, when given, is called on the loop thread after each result is ready to poll
    (an asyncio caller hands it `loop.call_soon_threadsafe` of its own poll, and so never waits).
    """

    def __init__(
        self,
        config: FetchConfig,
        *,
        clock: Callable[[], int] = wall_clock_ms,
        on_result: Callable[[], None] | None = None,
    ) -> None:
        self.config = config
        self._core = _Core(config, clock, _LoopThread.acquire(), on_result)
        self._finalizer = weakref.finalize(self, self._core.shutdown, wait=False)

    def submit(self, key: str, token: Hashable) -> None:
        """Ask for `key`'s document on behalf of `token`; join the fetch in flight if any."""
        core = self._core
        with core.lock:
            if core.closed:
                raise RuntimeError("submit on a closed AsyncFetcher; create a new one")
            waiting = core.waiters.get(key)
            if waiting is not None:
                waiting.append(token)
                core.counts["deduplicated"] += 1
                return
            core.waiters[key] = [token]
            core.runner.loop.call_soon_threadsafe(core.enqueue, key)

    def poll(self) -> list[FetchResult]:
        """Return the results completed since the last poll (possibly none)."""
        core = self._core
        with core.lock:
            out, core.done = core.done, []
            core.ready.clear()
        return out

    def wait_for_results(self, timeout_s: float | None = None) -> bool:
        """Sleep until a result is ready to poll or `timeout_s` passed; True if one is ready."""
        return self._core.ready.wait(timeout_s)

    def pending(self) -> int:
        """Return how many keys were submitted and not yet returned by `poll`."""
        core = self._core
        with core.lock:
            return len(core.waiters) + len(core.done)

    def in_flight(self) -> dict[str, tuple[Hashable, ...]]:
        """Return every key submitted and not yet returned by `poll`, with its tokens.

        Completed results not yet polled are included, so a snapshot built from this and
        resubmitted after a restart loses no token.
        """
        core = self._core
        with core.lock:
            out = {k: tuple(v) for k, v in core.waiters.items()}
            for result in core.done:
                out[result.key] = result.tokens + out.get(result.key, ())
        return out

    def metrics(self) -> FetchMetrics:
        """Return a copy of the counters."""
        return FetchMetrics(**self._core.counts)

    @property
    def closed(self) -> bool:
        """True once `close` was called."""
        return self._core.closed

    def close(self, timeout_s: float = 5.0) -> None:
        """Cancel every call, close the session and, if it was the last fetcher, stop the loop.

        Results not yet polled are dropped. Idempotent.
        """
        self._finalizer.detach()
        self._core.shutdown(wait=True, timeout_s=timeout_s)

    def __enter__(self) -> AsyncFetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
