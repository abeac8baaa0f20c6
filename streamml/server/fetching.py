"""On-demand fetches awaited from the service's event loop, with the flow's `AsyncFetcher`.

The fetcher runs its calls on its own loop thread (bounded, retried, one call per key in
flight); its `on_result` callback hands results back to the service's loop, where each waiting
request's future is resolved. Nothing waits on a thread.
"""

from __future__ import annotations

import asyncio
import contextlib

from streamml.operators.fetch import AsyncFetcher, FetchConfig, FetchResult

__all__ = ["LoopFetcher"]


class LoopFetcher:
    """One `AsyncFetcher` driven from the event loop: `fetch(account)` is a future."""

    def __init__(self, config: FetchConfig, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiters: dict[str, list[asyncio.Future[FetchResult]]] = {}
        self.fetcher = AsyncFetcher(config, on_result=self._wake)

    def _wake(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed at shutdown
            self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        for result in self.fetcher.poll():
            for fut in self.waiters.pop(result.key, ()):
                if not fut.done():
                    fut.set_result(result)

    def fetch(self, account: str) -> asyncio.Future[FetchResult]:
        """Return a future of `account`'s answer (joining a fetch already in flight)."""
        fut: asyncio.Future[FetchResult] = self.loop.create_future()
        waiting = self.waiters.setdefault(account, [])
        if not waiting:
            self.fetcher.submit(account, account)
        waiting.append(fut)
        return fut

    def close(self) -> None:
        """Stop the fetcher (calls in flight are cancelled)."""
        self.fetcher.close()
