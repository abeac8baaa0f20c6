"""Micro-batches of the requests that reach the same step in the same event-loop turn.

`TickBatcher(fn).submit(item)` awaits ``fn(items)[i]``, where `items` are every item submitted
before the loop's next turn. An idle service pays one loop hop per step; a busy one, whose
requests queue up, reads the stores with one multi-get per shard and scores with one ONNX
Runtime call per model version for all of them, as the flow does for a batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

__all__ = ["TickBatcher"]

T = TypeVar("T")
R = TypeVar("R")


class TickBatcher(Generic[T, R]):
    """Run `fn` once per event-loop turn on every item submitted during it."""

    def __init__(self, fn: Callable[[list[T]], Sequence[R]]) -> None:
        self.fn = fn
        self._items: list[T] = []
        self._futures: list[asyncio.Future[R]] = []
        self.batches = 0
        self.largest = 0

    async def submit(self, item: T) -> R:
        """Add `item` to this turn's batch and return its result."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[R] = loop.create_future()
        if not self._items:
            loop.call_soon(self._run)
        self._items.append(item)
        self._futures.append(fut)
        return await fut

    def _run(self) -> None:
        items, futures = self._items, self._futures
        self._items, self._futures = [], []
        self.batches += 1
        self.largest = max(self.largest, len(items))
        try:
            results = self.fn(items)
        except Exception as exc:
            for fut in futures:
                if not fut.done():
                    fut.set_exception(exc)
            return
        for fut, result in zip(futures, results, strict=True):
            if not fut.done():
                fut.set_result(result)
