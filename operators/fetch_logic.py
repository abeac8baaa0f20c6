"""A Bytewax stateful-batch logic that owns an `AsyncFetcher` and survives restarts.

`FetchingLogic` does the plumbing every asynchronous enrichment needs: while fetches are
outstanding it asks Bytewax to call `on_notify` again a few milliseconds later and hands the
completed results to `on_results`; its snapshot holds every key submitted and not yet answered,
with its tokens, and a logic built from that snapshot submits them again, so a resume re-issues
the calls that were in flight when the snapshot was taken.

Key granularity: a `stateful_batch` logic exists per key, and each `FetchingLogic` owns one
fetcher (a session and `max_in_flight` connections; the event loop thread is shared by the
process). Key the stream by shard (``shard-NNN``, see `streamml.operators.shard_events`), not by
account: one logic and one fetcher per shard, a bounded number of them, and `max_in_flight` bounds
the calls of a shard. Tokens (request ids, for instance) must be picklable.

Bytewax ends a run at EOF without firing pending notifications, so `on_eof` waits up to
`eof_drain_s` for the outstanding results (only finite inputs reach EOF); whatever is still
outstanding stays in the snapshot.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Generic, TypeVar

from bytewax.operators import StatefulBatchLogic
from streamml.operators.fetch import AsyncFetcher, FetchResult

__all__ = ["FetchSnapshot", "FetchingLogic"]

V = TypeVar("V")
W = TypeVar("W")
S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class FetchSnapshot(Generic[S]):
    """The recoverable state of a `FetchingLogic`: outstanding keys with tokens, and its own."""

    in_flight: tuple[tuple[str, tuple[Hashable, ...]], ...]
    state: S | None = None


class FetchingLogic(StatefulBatchLogic[V, W, FetchSnapshot[S]], Generic[V, W, S]):
    """Base of a stateful-batch logic whose outputs wait for asynchronous fetches.

    A subclass implements `on_batch` (submitting keys with `self.fetcher.submit` and returning
    ``(outputs, FetchingLogic.RETAIN)``; it may add ``self.collect()`` to its outputs) and
    `on_results`, which turns completed `FetchResult`s into outputs. Its own recoverable state
    comes from `state_snapshot` and is given back as `resumed_state` after a restart. It must
    call ``super().__init__(fetcher, resume)`` from its constructor. Logics are always retained:
    one per shard is a bounded number.
    """

    def __init__(
        self,
        fetcher: AsyncFetcher,
        resume: FetchSnapshot[S] | None,
        *,
        poll_interval: timedelta = timedelta(milliseconds=2),
        eof_drain_s: float = 30.0,
    ) -> None:
        self.fetcher = fetcher
        self.poll_interval = poll_interval
        self.eof_drain_s = eof_drain_s
        self.resumed_state: S | None = None
        if resume is not None:
            self.resumed_state = resume.state
            for key, tokens in resume.in_flight:
                for token in tokens:
                    fetcher.submit(key, token)

    @abstractmethod
    def on_results(self, results: list[FetchResult]) -> list[W]:
        """Return the outputs of completed fetches (called only with at least one result)."""

    def state_snapshot(self) -> S | None:
        """Return the subclass's own recoverable state (immutable, picklable); None by default."""
        return None

    def collect(self) -> list[W]:
        """Return the outputs of every fetch completed since the last collection."""
        results = self.fetcher.poll()
        return self.on_results(results) if results else []

    def on_notify(self) -> tuple[list[W], bool]:
        """Collect completed fetches."""
        return self.collect(), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[W], bool]:
        """Wait up to `eof_drain_s` for outstanding fetches and collect them."""
        out = self.collect()
        deadline = time.monotonic() + self.eof_drain_s
        while self.fetcher.pending():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self.fetcher.wait_for_results(left)
            out += self.collect()
        return out, StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        """Return a moment `poll_interval` ahead while fetches are outstanding."""
        if self.fetcher.pending():
            return datetime.now(UTC) + self.poll_interval
        return None

    def snapshot(self) -> FetchSnapshot[S]:
        """Return the outstanding keys and tokens and the subclass's own state."""
        return FetchSnapshot(tuple(self.fetcher.in_flight().items()), self.state_snapshot())

    def close(self) -> None:
        """Close the fetcher."""
        self.fetcher.close()
