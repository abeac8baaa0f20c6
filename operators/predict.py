"""The prediction operator: requests keyed by shard become predictions, timeouts or dead letters.

`predict(step_id, up, config)` takes a keyed stream of `PredictionRequest`s and `ModelMetadata`
snapshots (every shard key must receive every snapshot; see `metadata_to_shards`) and emits one
`PredictOutput` per activation of a shard: the prediction records (answers and shadows), the
timeout records and the dead letters of that moment, with counters.

Per request, with the newest metadata the shard has seen (`streamml.operators.assembly`): select
the versions, read the online features and the stored on-demand answers in one multi-get per
shard, and score at once when nothing needs fetching; otherwise submit the fetches (one
`AsyncFetcher` per service and process, shared by its shards: bounded, retried, one call per
account in flight shared by its requests) and hold the request until its answers come or its
deadline passes (`request_ttl_ms` after it arrived; `notify_at` wakes the shard then). At the
deadline the request is scored with what it has (stale answers, then each feature's missing
policy) or ends with a timeout record naming the missing `reject` features. Fetched answers are
written to the on-demand store with their fetch time and the values the routed contracts extract
from them, so later requests within the TTL use them without fetching or parsing again.

Every request ends once: a `request_id` already pending, or among the last `dedupe_ids` ids the
shard ended within `dedupe_ms`, is a dead letter `duplicate_request_id` (both bound the memory the
ids take). The shard's recoverable state is its pending requests (with their arrival and
deadline) and those ended ids; a resumed shard plans its pending requests again, which re-issues
the fetches that were in flight, and gives each a new deadline `request_ttl_ms` after the resume
(the time the process was down does not count against a request's wait, so a restart never turns
a request into a timeout before the registry is read again). After every deadline has passed, a
shard holds no pending request.
"""

from __future__ import annotations

import gc
import heapq
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from bytewax import operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream, StatefulBatchLogic
from streamml.onnx_models import FeatureSpec
from streamml.operators.assembly import (
    Gathered,
    Plan,
    Resolved,
    extract_values,
    plan_request,
    resolve,
    score_resolved,
    services_to_fetch,
)
from streamml.operators.fetch import AsyncFetcher, FetchConfig, FetchResult
from streamml.operators.gather import StoredReader, fetched_doc
from streamml.operators.metadata import ModelMetadata
from streamml.operators.records import DeadLetter, PredictionRequest
from streamml.operators.scoring import Scorer, ScoringConfig
from streamml.operators.shard import shard_key
from streamml.state.layout import StateLayout
from streamml.state.ondemand import OnDemandStore, values_service
from streamml.state.online import OnlineStore
from streamml.state.predictions import PredictionRecord, TimeoutRecord
from streamml.state.sharding import shard_of

__all__ = ["PredictConfig", "PredictOutput", "metadata_to_shards", "predict", "tune_gc"]

_MS = 1_000_000


@dataclass(frozen=True)
class PredictConfig:
    """Settings of the prediction operator.

    `state_dir` holds the online store (read) and the on-demand answers (written);
    `services` maps an on-demand service name to where it is fetched (services of a contract
    that are not here are never fetched: stored answers or the missing policy serve them).
    `online_refresh_ms` is how often a shard catches up with the online store's newer writes.
    """

    state_dir: Path
    registry_dir: Path
    layout: StateLayout
    services: tuple[tuple[str, FetchConfig], ...] = ()
    request_ttl_ms: int = 2000
    dedupe_ms: int = 600_000
    dedupe_ids: int = 20_000
    online_refresh_ms: int = 1000
    poll_interval_ms: float = 2.0
    scoring: ScoringConfig | None = None

    def __post_init__(self) -> None:
        for name in ("request_ttl_ms", "online_refresh_ms"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 ms, got {getattr(self, name)}")
        if self.dedupe_ms < 0 or self.dedupe_ids < 0:
            raise ValueError(
                f"dedupe_ms and dedupe_ids must be >= 0, got {self.dedupe_ms}, {self.dedupe_ids}"
            )


@dataclass(frozen=True, slots=True)
class PredictOutput:
    """What one shard produced in one activation."""

    predictions: tuple[PredictionRecord, ...] = ()
    timeouts: tuple[TimeoutRecord, ...] = ()
    dead: tuple[DeadLetter, ...] = ()
    counts: dict[str, int] = field(default_factory=dict)

    def answers(self) -> list[PredictionRecord]:
        """Return the answering predictions (shadows left out)."""
        return [p for p in self.predictions if p.role == "answer"]


@dataclass(slots=True, eq=False)
class _Pending:
    plan: Plan | None
    request: PredictionRequest
    arrived_ns: int
    deadline_ns: int
    gathered: Gathered = field(default_factory=Gathered)
    awaiting: set[str] = field(default_factory=set)


_SCORERS: dict[tuple[Path, ScoringConfig | None], Scorer] = {}


class _SharedFetcher:
    """One `AsyncFetcher` per service and process, its results sorted by shard for the logics."""

    def __init__(self, config: FetchConfig, shards: int, shard_hash: str) -> None:
        self.fetcher = AsyncFetcher(config)
        self.shards = shards
        self.shard_hash = shard_hash
        self.inbox: dict[int, list[FetchResult]] = {}
        self.users = 0

    def submit(self, account: str, token: str) -> None:
        self.fetcher.submit(account, token)

    def poll(self, shard: int) -> list[FetchResult]:
        for r in self.fetcher.poll():
            owner = shard_of(r.key.encode(), self.shards, self.shard_hash)
            self.inbox.setdefault(owner, []).append(r)
        return self.inbox.pop(shard, [])


_FETCHERS: dict[tuple[str, FetchConfig, int, str], _SharedFetcher] = {}


def _acquire_fetcher(
    service: str, config: FetchConfig, shards: int, shard_hash: str = "crc32"
) -> _SharedFetcher:
    key = (service, config, shards, shard_hash)
    shared = _FETCHERS.get(key)
    if shared is None or shared.fetcher.closed:
        shared = _FETCHERS[key] = _SharedFetcher(config, shards, shard_hash)
    shared.users += 1
    return shared


def _release_fetcher(shared: _SharedFetcher) -> None:
    shared.users -= 1
    if shared.users <= 0:
        shared.fetcher.close()


def _scorer(config: PredictConfig) -> Scorer:
    key = (config.registry_dir, config.scoring)
    found = _SCORERS.get(key)
    if found is None:
        scoring = config.scoring or ScoringConfig(registry_dir=config.registry_dir)
        found = _SCORERS[key] = Scorer(scoring)
    return found


def _dead(request: PredictionRequest, reason: str, detail: str) -> DeadLetter:
    raw = orjson.dumps(request.to_json())
    return DeadLetter(reason, raw, request.partition, request.position, detail)


class _PredictLogic(StatefulBatchLogic[Any, PredictOutput, Any]):
    def __init__(self, config: PredictConfig, resume: Any, clock_ns=time.time_ns):
        self.shard = -1
        self.config = config
        self.clock_ns = clock_ns
        self.scorer = _scorer(config)
        self.online = OnlineStore(config.state_dir, follow=True)
        self.online_refreshed_ns = clock_ns()
        self.ondemand = OnDemandStore(config.state_dir)
        self.fetchers = {
            name: _acquire_fetcher(name, fc, config.layout.shards, config.layout.shard_hash)
            for name, fc in config.services
        }
        self.waiting: set[str] = set()
        self.meta: ModelMetadata | None = None
        self.pending: dict[str, _Pending] = {}
        self.deadlines: list[tuple[int, str]] = []
        self.unplanned: list[_Pending] = []
        self.stored = StoredReader(self.online, self.ondemand)
        self.plans: dict[Any, tuple[Any, ...]] = {}
        self._specs: dict[tuple[int, str], list[FeatureSpec]] = {}
        self.ended: dict[str, int] = {}
        self._out = self._fresh_out()
        if resume is not None:
            self.shard, pending, ended = resume
            self.ended = dict(ended)
            restart = clock_ns() + config.request_ttl_ms * _MS
            for request, arrived_ns, deadline_ns in pending:
                p = _Pending(None, request, arrived_ns, max(deadline_ns, restart))
                self._hold(p)
                self.unplanned.append(p)

    def _fresh_out(self) -> dict[str, Any]:
        return {"predictions": [], "timeouts": [], "dead": [], "counts": Counter()}

    def _current(self, deadline: int, rid: str) -> bool:
        """Whether a deadline entry belongs to a request still pending (not an earlier one)."""
        p = self.pending.get(rid)
        return p is not None and p.deadline_ns == deadline

    def _hold(self, p: _Pending) -> None:
        self.pending[p.request.request_id] = p
        heapq.heappush(self.deadlines, (p.deadline_ns, p.request.request_id))

    # -- intake -----------------------------------------------------------------------------

    def on_batch(self, values: list[Any]) -> tuple[list[PredictOutput], bool]:
        now = self.clock_ns()
        counts = self._out["counts"]
        fresh: list[_Pending] = []
        for v in values:
            if isinstance(v, ModelMetadata):
                if self.meta is None or v.revision > self.meta.revision:
                    self.meta = v
                    counts["metadata_updates"] += 1
                continue
            counts["requests"] += 1
            if self.shard < 0:
                self.shard = self.config.layout.shard_of(v.account.encode())
            rid = v.request_id
            if rid in self.pending or rid in self.ended:
                counts["dead"] += 1
                counts["dead.duplicate_request_id"] += 1
                detail = f"request {rid!r} was already received; it is answered once"
                self._out["dead"].append(_dead(v, "duplicate_request_id", detail))
                continue
            p = _Pending(None, v, now, now + self.config.request_ttl_ms * _MS)
            self._hold(p)
            fresh.append(p)
        if self.meta is None:
            self.unplanned += fresh
        else:
            waiting, self.unplanned = self.unplanned, []
            alive = [p for p in waiting if self.pending.get(p.request.request_id) is p]
            self._start(alive + fresh)
        self._collect()
        self._expire(now)
        return self._emit(), StatefulBatchLogic.RETAIN

    def _start(self, items: list[_Pending]) -> None:
        """Plan requests, read what is stored, score those complete, fetch for the others."""
        if not items:
            return
        assert self.meta is not None
        planned: list[_Pending] = []
        for p in items:
            got = plan_request(p.request, self.meta, self.plans)
            if isinstance(got, tuple):
                self._end(p.request.request_id)
                self._out["dead"].append(_dead(p.request, *got))
                self._out["counts"]["dead"] += 1
                self._out["counts"][f"dead.{got[0]}"] += 1
                continue
            p.plan = got
            planned.append(p)
        self._refresh_online()
        self.stored.read([(p.plan, p.gathered) for p in planned])  # type: ignore[misc]
        ready = []
        for p in planned:
            for service in services_to_fetch(p.plan, p.gathered.docs):  # type: ignore[arg-type]
                fetcher = self.fetchers.get(service)
                if fetcher is not None:
                    fetcher.submit(p.request.account, p.request.request_id)
                    p.awaiting.add(service)
                    self.waiting.add(p.request.request_id)
                    self._out["counts"][f"fetch.{service}.submitted"] += 1
            if not p.awaiting:
                ready.append(p)
        self._score(ready)

    def _service_specs(self, service: str) -> list[FeatureSpec]:
        """Return the on-demand specs of `service` in every version the metadata routes to."""
        if self.meta is None:
            return []
        key = (self.meta.revision, service)
        found = self._specs.get(key)
        if found is None:
            seen: dict[str, FeatureSpec] = {}
            for entry in self.meta.models:
                for info in entry.versions:
                    for spec in info.contract.for_service(service):
                        seen.setdefault(spec.source.expression or "", spec)
            found = self._specs[key] = list(seen.values())
        return found

    def _refresh_online(self) -> None:
        now = self.clock_ns()
        if now - self.online_refreshed_ns >= self.config.online_refresh_ms * _MS:
            self.online.refresh()
            self.online_refreshed_ns = now

    # -- completion -------------------------------------------------------------------------

    def _collect(self) -> None:
        """Apply completed fetches: store the answers, score the requests now complete."""
        ready = []
        for service, fetcher in self.fetchers.items():
            results = fetcher.poll(self.shard)
            if not results:
                continue
            stored = [r for r in results if r.ok and r.body is not None]
            if stored:
                specs = self._service_specs(service)
                self.ondemand.put_many(
                    self.shard, service, [(r.key.encode(), r.fetched_at_ms, r.body) for r in stored]
                )
                self.ondemand.put_many(
                    self.shard,
                    values_service(service),
                    [
                        (
                            r.key.encode(),
                            r.fetched_at_ms,
                            orjson.dumps(extract_values(r.document, specs)),
                        )
                        for r in stored
                    ],
                )
            counts = self._out["counts"]
            for r in results:
                counts[f"fetch.{service}.{'ok' if r.ok else 'failed'}"] += 1
                doc = fetched_doc(r)
                for token in dict.fromkeys(r.tokens):
                    p = self.pending.get(token)  # type: ignore[arg-type]
                    if p is None or service not in p.awaiting:
                        continue
                    p.awaiting.discard(service)
                    if doc is not None:
                        p.gathered.docs[service] = doc
                    if not p.awaiting:
                        self.waiting.discard(token)  # type: ignore[arg-type]
                        ready.append(p)
        self._score(ready)

    def _expire(self, now: int) -> None:
        """End the requests whose deadline has passed, with what they have."""
        due = []
        while self.deadlines and self.deadlines[0][0] <= now:
            deadline, rid = heapq.heappop(self.deadlines)
            p = self.pending.get(rid)
            if p is not None and p.deadline_ns == deadline:
                due.append(p)
                self.waiting.discard(rid)
        if not due:
            return
        counts = self._out["counts"]
        scorable = []
        for p in due:
            if p.plan is None:
                self._end(p.request.request_id)
                counts["timeouts.no_metadata"] += 1
                self._out["timeouts"].append(
                    TimeoutRecord(
                        p.request.request_id,
                        p.request.model,
                        p.request.account,
                        p.request.ts,
                        (),
                        "no_metadata: the model registry was not read before the deadline",
                        -1,
                        now // _MS,
                    )
                )
                continue
            counts["deadline_reached"] += 1
            p.awaiting.clear()
            scorable.append(p)
        self._score(scorable)

    def _end(self, rid: str) -> None:
        self.pending.pop(rid, None)
        self.ended[rid] = self.clock_ns()

    def _score(self, ready: list[_Pending]) -> None:
        if not ready:
            return
        items: list[Resolved] = []
        for p in ready:
            items.append(
                resolve(p.plan, p.gathered, arrived_ns=p.arrived_ns)  # type: ignore[arg-type]
            )
            self._end(p.request.request_id)
        predictions, timeouts = score_resolved(self.scorer, items, clock_ns=self.clock_ns)
        out = self._out
        out["predictions"] += predictions
        out["timeouts"] += timeouts
        counts = out["counts"]
        for rec in predictions:
            counts["answers" if rec.role == "answer" else "shadows"] += 1
            if rec.role == "answer":
                for f in rec.features:
                    counts[f"features.{f.status}"] += 1
        for t in timeouts:
            counts[f"timeouts.{t.reason.split(':', 1)[0]}"] += 1

    def _emit(self) -> list[PredictOutput]:
        self._prune_ended()
        out = self._out
        if not (out["predictions"] or out["timeouts"] or out["dead"] or out["counts"]):
            return []
        self._out = self._fresh_out()
        return [
            PredictOutput(
                tuple(out["predictions"]),
                tuple(out["timeouts"]),
                tuple(out["dead"]),
                dict(out["counts"]),
            )
        ]

    def _prune_ended(self) -> None:
        cutoff = self.clock_ns() - self.config.dedupe_ms * _MS
        ended = self.ended
        while len(ended) > self.config.dedupe_ids:
            del ended[next(iter(ended))]
        while ended:
            rid = next(iter(ended))
            if ended[rid] > cutoff:
                break
            del ended[rid]

    # -- Bytewax hooks ----------------------------------------------------------------------

    def on_notify(self) -> tuple[list[PredictOutput], bool]:
        self._collect()
        self._expire(self.clock_ns())
        return self._emit(), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[PredictOutput], bool]:
        """Finish every pending request before the run ends: fetches or deadlines."""
        while self.pending:
            self._collect()
            now = self.clock_ns()
            self._expire(now)
            if not self.pending:
                break
            nxt = self.deadlines[0][0] if self.deadlines else now
            wait_s = max(0.0, min((nxt - now) / 1e9, 0.05))
            if self.waiting and self.fetchers:
                next(iter(self.fetchers.values())).fetcher.wait_for_results(wait_s)
            else:
                time.sleep(wait_s)
        out = self._emit()
        self.close()
        return out, StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        moments = []
        if self.waiting:
            moments.append(time.time() + self.config.poll_interval_ms / 1000.0)
        while self.deadlines and not self._current(*self.deadlines[0]):
            heapq.heappop(self.deadlines)
        if self.deadlines:
            moments.append(self.deadlines[0][0] / 1e9)
        if not moments:
            return None
        return datetime.fromtimestamp(min(moments), tz=UTC) + timedelta(microseconds=1)

    def snapshot(self) -> Any:
        pending = tuple((p.request, p.arrived_ns, p.deadline_ns) for p in self.pending.values())
        return self.shard, pending, tuple(self.ended.items())

    def close(self) -> None:
        """Release the fetchers and close the stores (Bytewax has no close hook: EOF calls it)."""
        for fetcher in self.fetchers.values():
            _release_fetcher(fetcher)
        self.fetchers = {}
        self.online.close()
        self.ondemand.close()


GC_THRESHOLDS = (100_000, 50, 1000)
"""Collector thresholds of a prediction worker (CPython's defaults are (700, 10, 10))."""


def tune_gc() -> None:
    """Make CPython's cyclic garbage collector run less often in this process.

    A prediction worker makes and drops many small acyclic objects per request (records,
    tuples), which reference counting frees; with the default thresholds the collector still
    walks every young object about every 700 allocations and the whole heap often, which
    measured 30-60% of a happy-path run's time. Objects alive at start are frozen out of
    collection.
    """
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def metadata_to_shards(
    step_id: str, meta: Stream[ModelMetadata], shards: int
) -> KeyedStream[ModelMetadata]:
    """Send every metadata snapshot to every shard key."""
    keys = [shard_key(i) for i in range(shards)]
    return op.flat_map(step_id, meta, lambda m: [(k, m) for k in keys])


@operator
def predict(
    step_id: str,
    up: KeyedStream[PredictionRequest | ModelMetadata],
    config: PredictConfig,
) -> KeyedStream[PredictOutput]:
    """Turn requests into predictions, timeouts and dead letters (see the module docstring)."""
    return op.stateful_batch("logic", up, lambda resume: _PredictLogic(config, resume))
