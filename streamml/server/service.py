"""What the REST service does, without HTTP: predictions, features, models, readiness.

A prediction runs the flow's library code (`streamml.operators.assembly` and
`streamml.operators.gather`): `plan_request` selects the versions from the newest registry
snapshot, `StoredReader.read` reads the online values and stored on-demand answers,
`services_to_fetch` says which answers are too old, those are fetched with the flow's
`AsyncFetcher` (bounded, retried) while the handler awaits, `resolve` and `score_resolved` build
and score the rows of every variant, and the `Recorder` writes the records with the flow's
writers. Requests that reach the read or the scoring step in the same event-loop turn are read
and scored together (`TickBatcher`), as the flow batches them.

Differences from the flow, by necessity: the flow owns the on-demand store's writer lock, so
answers fetched here are kept in a bounded in-process cache (not in RocksDB), and a
`request_id` is deduplicated among the last `_RECENT` requests of this process (the flow
deduplicates per shard).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from typing import Any

from streamml.dataflows.predict import TELEMETRY_SERVICE
from streamml.onnx_models import ModelRegistry
from streamml.operators.assembly import (
    Doc,
    Gathered,
    Plan,
    Resolved,
    plan_request,
    resolve,
    score_resolved,
    services_to_fetch,
)
from streamml.operators.fetch import FetchConfig, wall_clock_ms
from streamml.operators.gather import StoredReader, fetched_doc
from streamml.operators.metadata import ModelMetadata, load_metadata
from streamml.operators.predict import tune_gc
from streamml.operators.records import PredictionRequest
from streamml.operators.scoring import Scorer, ScoringConfig
from streamml.server.answers import ms, prediction_answer, stored_answer
from streamml.server.batching import TickBatcher
from streamml.server.config import ServeConfig
from streamml.server.fetching import LoopFetcher
from streamml.server.http import Deadline, HTTPError
from streamml.server.metrics import ServiceMetrics
from streamml.server.recorder import Recorder
from streamml.state.ondemand import OnDemandReader
from streamml.state.online import OnlineStore
from streamml.state.predictions import (
    PredictionRecord,
    TimeoutRecord,
    read_predictions,
    read_timeouts,
)

__all__ = ["Service"]

_RECENT = 20_000
"""Answers remembered per process, to answer a repeated `request_id` once."""
_FETCHED = 10_000
"""On-demand answers fetched by this process kept in memory."""
_META_CHECK_S = 0.25


class Service:
    """The service's state: stores, registry snapshot, scorer, fetchers, recorder."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        store = config.prediction_store
        self.metrics = ServiceMetrics(monitoring_dir=store / "metrics" if store else None)
        self.registry = ModelRegistry(config.registry_dir)
        self.online = OnlineStore(config.state_dir, follow=True)
        self.answers = OnDemandReader(config.state_dir, follow=True)
        self.stored = StoredReader(self.online, self.answers)
        self.scorer = Scorer(ScoringConfig(registry_dir=config.registry_dir))
        self.meta = load_metadata(self.registry)
        self._meta_checked = time.monotonic()
        self.plans: dict[Any, tuple[Any, ...]] = {}
        self.recorder: Recorder | None = None
        self.fetchers: dict[str, LoopFetcher] = {}
        self.fetched: OrderedDict[tuple[str, str], Doc] = OrderedDict()
        self.recent: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.running: set[str] = set()
        self.producer = None
        self._reads = TickBatcher(self._read_many)
        self._scores = TickBatcher(self._score_many)
        self._stop_refresh = threading.Event()
        self._refresher: threading.Thread | None = None
        self.refresh_error: BaseException | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start what lives with the event loop: fetchers, recorder, refreshers, producer."""
        loop = asyncio.get_running_loop()
        cfg = self.config
        tune_gc()  # as a prediction worker: few cyclic collections, the start-up heap frozen
        if cfg.telemetry_url:
            fetch = FetchConfig(
                cfg.telemetry_url,
                timeout_ms=cfg.fetch_timeout_ms,
                max_attempts=cfg.fetch_attempts,
            )
            self.fetchers[TELEMETRY_SERVICE] = LoopFetcher(fetch, loop)
        self.recorder = Recorder(cfg.store, cfg.pipeline_version, cfg.flush_interval_ms / 1000)
        if cfg.brokers and cfg.requests_topic:
            from streamml.operators.kafka import KafkaSinkConfig
            from streamml.operators.kafka_requests import RequestProducer

            sink = KafkaSinkConfig(
                brokers=cfg.brokers,
                topic=cfg.requests_topic,
                linger_ms=0,
                client_id="streamml-serve",
            )
            self.producer = await asyncio.to_thread(RequestProducer, sink)
        self._stop_refresh.clear()
        self._refresher = threading.Thread(
            target=self._refresh_online, name="streamml-online-refresh", daemon=True
        )
        self._refresher.start()

    def _refresh_online(self) -> None:
        """Catch the stores up with their writers, on a thread (RocksDB releases the GIL)."""
        interval = self.config.online_refresh_ms / 1000
        while not self._stop_refresh.wait(interval):
            try:
                self.online.refresh()
                self.answers.refresh()
            except Exception as exc:  # reported by /readyz; reads go on with what they see
                self.refresh_error = exc
            else:
                self.refresh_error = None

    async def stop(self) -> None:
        """Stop the tasks, write what is buffered, close the stores."""
        self._stop_refresh.set()
        if self._refresher is not None:
            self._refresher.join()
        for f in self.fetchers.values():
            f.close()
        if self.recorder is not None:
            await asyncio.to_thread(self.recorder.close)
        if self.producer is not None:
            await asyncio.to_thread(self.producer.close)
        self.online.close()
        self.answers.close()

    # -- models -------------------------------------------------------------------------------

    def metadata(self) -> ModelMetadata:
        """Return the newest registry snapshot (its revision checked at most every 250 ms)."""
        now = time.monotonic()
        if now - self._meta_checked >= _META_CHECK_S:
            self._meta_checked = now
            if self.registry.revision() != self.meta.revision:
                self.meta = load_metadata(self.registry)
        return self.meta

    def refresh_metadata(self) -> None:
        """Read the registry again now (after a routing change made here)."""
        self.meta = load_metadata(self.registry)
        self._meta_checked = time.monotonic()

    # -- predictions --------------------------------------------------------------------------

    def _cached_answers(self, plan, gathered: Gathered) -> None:
        """Use an answer this process fetched when it is newer than the stored one."""
        account = plan.request.account
        for service in plan.service_ttl_ms:
            mine = self.fetched.get((service, account))
            if mine is None:
                continue
            stored = gathered.docs.get(service)
            if stored is None or (stored.fetched_at or -1) < (mine.fetched_at or -1):
                gathered.docs[service] = Doc(mine.document, mine.fetched_at, values=mine.values)

    async def _fetch(
        self, plan, gathered: Gathered, services: list[str], arrived: float, deadline: Deadline
    ) -> None:
        account = plan.request.account
        futures = {s: self.fetchers[s].fetch(account) for s in services}
        wait_s = self.config.fetch_wait_ms / 1000 - (time.perf_counter() - arrived)
        stage = f"fetching on-demand service {', '.join(services)}"
        if deadline.remaining() < wait_s:
            await deadline.wait(asyncio.wait(futures.values()), stage)
        else:
            await asyncio.wait(futures.values(), timeout=max(0.0, wait_s))
        for service, fut in futures.items():
            if not fut.done():
                self.metrics.fetches.labels(service, "deadline").inc()
                continue
            result = fut.result()
            doc = fetched_doc(result)
            self.metrics.fetches.labels(service, "ok" if doc else "failed").inc()
            if doc is not None:
                gathered.docs[service] = doc
                self.fetched[(service, account)] = doc
                if len(self.fetched) > _FETCHED:
                    self.fetched.popitem(last=False)

    async def predict(self, request: PredictionRequest, deadline: Deadline) -> dict[str, Any]:
        """Answer one request as the flow would, record it, and return the JSON answer."""
        rid = request.request_id
        done = self.recent.get(rid)
        if done is not None:
            return done
        if rid in self.running:
            raise HTTPError(409, "in_progress", f"request {rid!r} is being answered")
        self.running.add(rid)
        try:
            return await self._predict(request, deadline)
        except HTTPError as exc:
            if exc.status == 504:
                self._record_timeout(request, (), f"deadline: {exc.detail}")
            raise
        finally:
            self.running.discard(rid)

    async def _predict(self, request: PredictionRequest, deadline: Deadline) -> dict[str, Any]:
        arrived = time.perf_counter()
        arrived_ns = time.time_ns()
        meta = self.metadata()
        plan = plan_request(request, meta, self.plans)
        if isinstance(plan, tuple):
            reason, detail = plan
            status = 404 if reason == "unknown_model" else 503
            raise HTTPError(status, reason, detail, field="model")
        gathered = await self._reads.submit((plan, Gathered()))
        deadline.check("reading the online and on-demand stores")
        if self.fetched:
            self._cached_answers(plan, gathered)
        to_fetch = [s for s in services_to_fetch(plan, gathered.docs) if s in self.fetchers]
        if to_fetch:
            await self._fetch(plan, gathered, to_fetch, arrived, deadline)
        resolved = resolve(plan, gathered, arrived_ns=arrived_ns)
        predictions, timeouts = await self._scores.submit(resolved)
        deadline.check("scoring")
        self._record(predictions, timeouts)
        if timeouts:
            t = timeouts[0]
            if t.missing:
                raise HTTPError(
                    422,
                    "missing_features",
                    f"features {', '.join(t.missing)} are missing and the model rejects that",
                    missing=list(t.missing),
                    field=f"context.{t.missing[0]}",
                )
            raise HTTPError(500, "score_failed", t.reason)
        body = prediction_answer(predictions)
        self.recent[request.request_id] = body
        if len(self.recent) > _RECENT:
            self.recent.popitem(last=False)
        return body

    def _read_many(self, items: list[tuple[Plan, Gathered]]) -> list[Gathered]:
        self.stored.read(items)
        return [g for _, g in items]

    def _score_many(
        self, items: list[Resolved]
    ) -> list[tuple[list[PredictionRecord], list[TimeoutRecord]]]:
        predictions, timeouts = score_resolved(self.scorer, items)
        out: dict[str, tuple[list[PredictionRecord], list[TimeoutRecord]]] = {
            r.plan.request.request_id: ([], []) for r in items
        }
        for p in predictions:
            out[p.request_id][0].append(p)
        for t in timeouts:
            out[t.request_id][1].append(t)
        return [out[r.plan.request.request_id] for r in items]

    def _record(self, predictions: list[PredictionRecord], timeouts: list[TimeoutRecord]) -> None:
        assert self.recorder is not None, "Service.start was not called"
        self.recorder.put(predictions, timeouts)
        m = self.metrics
        for p in predictions:
            m.count_prediction(p.model, p.version, p.variant, p.role)
            if p.role == "answer":
                statuses: dict[str, int] = {}
                for f in p.features:
                    statuses[f.status] = statuses.get(f.status, 0) + 1
                m.count_features(statuses)
        for t in timeouts:
            m.timeouts.labels(t.reason.split(":", 1)[0]).inc()

    def _record_timeout(self, request: PredictionRequest, missing: tuple[str, ...], reason: str):
        record = TimeoutRecord(
            request.request_id,
            request.model,
            request.account,
            request.ts,
            missing,
            reason,
            self.meta.revision,
            wall_clock_ms(),
        )
        self._record([], [record])
        self.recent[request.request_id] = {
            "request_id": request.request_id,
            "timeout": record.to_json(),
        }

    async def submit(self, request: PredictionRequest, deadline: Deadline) -> None:
        """Produce `request` to the requests topic; return once the broker acknowledged it."""
        if self.producer is None:
            raise HTTPError(
                503, "no_broker", "the service was started without --brokers/--requests-topic"
            )
        loop = asyncio.get_running_loop()
        acked: asyncio.Future[None] = loop.create_future()

        def done(error: BaseException | None) -> None:
            def settle() -> None:
                if acked.done():
                    return
                if error is None:
                    acked.set_result(None)
                else:
                    acked.set_exception(error)

            loop.call_soon_threadsafe(settle)

        self.producer.send(request, done)
        try:
            await deadline.wait(acked, f"producing to topic {self.producer.topic!r}")
        except HTTPError:
            raise
        except Exception as exc:
            raise HTTPError(503, "broker_refused", f"{type(exc).__name__}: {exc}") from None

    async def lookup(self, request_id: str, deadline: Deadline) -> dict[str, Any] | None:
        """Return the answer of `request_id` (this process's, or the prediction store's)."""
        mine = self.recent.get(request_id)
        if mine is not None:
            return mine

        def read() -> dict[str, Any] | None:
            rows = read_predictions(self.config.store, request_id).to_pylist()
            if rows:
                return stored_answer(rows)
            timeouts = read_timeouts(self.config.store, request_id).to_pylist()
            if timeouts:
                t = timeouts[0]
                t["ts"] = ms(t.pop("request_ts"))
                t["timed_out_at"] = ms(t["timed_out_at"])
                t.pop("date", None)
                return {"request_id": request_id, "timeout": t}
            return None

        return await deadline.wait(asyncio.to_thread(read), "reading the prediction store")

    # -- readiness ----------------------------------------------------------------------------

    async def readiness(self, deadline: Deadline) -> dict[str, dict[str, Any]]:
        """Check the stores, the registry and (when configured) the broker."""
        checks: dict[str, dict[str, Any]] = {}

        def store() -> None:
            self.online.get_batch(["readyz"], [0])

        for name, fn in (
            ("online_store", store),
            ("registry", lambda: (self.registry.revision(), self.registry.names())),
            ("prediction_store", lambda: self.config.store.mkdir(parents=True, exist_ok=True)),
        ):
            try:
                fn()
                checks[name] = {"ok": True}
            except Exception as exc:
                checks[name] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"}
        if self.refresh_error is not None:
            checks["online_store"] = {"ok": False, "detail": repr(self.refresh_error)}
        if self.recorder is not None and self.recorder.error is not None:
            checks["prediction_store"] = {"ok": False, "detail": repr(self.recorder.error)}
        if self.producer is not None:
            try:
                ok = await deadline.wait(
                    asyncio.to_thread(self.producer.reachable), "reaching the broker"
                )
            except HTTPError:
                ok = False
            checks["broker"] = {"ok": ok} if ok else {"ok": False, "detail": "no answer"}
        return checks
