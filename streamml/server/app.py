"""The REST service's routes: each parses and checks its input, calls the `Service`, answers JSON.

`create_app(config)` returns the ASGI application (`streamml.server.http.App`);
`app_from_env()` builds it from `STREAMML_SERVE_CONFIG` in each worker process.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec

from streamml.onnx_models import ModelNotFoundError, RegistryError
from streamml.server.auth import RateLimiter, TokenStore
from streamml.server.batching import TickBatcher
from streamml.server.config import ServeConfig
from streamml.server.http import App, HTTPError, Request, Response, Route, json_response
from streamml.server.metrics import CONTENT_TYPE
from streamml.server.openapi import DOCS_HTML, openapi_document
from streamml.server.service import Service
from streamml.server.validate import check_key, check_model_name, decode_body, prediction_request

__all__ = ["MAX_BATCH_ENTITIES", "app_from_env", "create_app"]

MAX_BATCH_ENTITIES = 1000
"""Most entities one `features:batch-get` may read."""
_PUBLIC_PROVENANCE = ("training_rows", "created_at", "registered_at", "estimator", "metrics")


class BatchGet(msgspec.Struct, forbid_unknown_fields=True):
    """Body of `POST /v1/features:batch-get`."""

    entities: list[str]
    features: list[str] | None = None
    as_of: int | None = None


class RouteChange(msgspec.Struct, forbid_unknown_fields=True):
    """Body of `POST /v1/models/{name}/route`."""

    live: str | None = None
    split: dict[str, float] | None = None
    experiment: str | None = None
    shadow: list[str] | None = None
    clear_split: bool = False


def _version_json(v: Any, detail: bool) -> dict[str, Any]:
    out = {
        "version": v.version,
        "stage": v.stage,
        "sha256": v.sha256,
        "classes": list(v.classes),
    }
    if detail:
        out["feature_names"] = list(v.feature_names)
        out["contract"] = v.contract.to_json()
        out.update({k: v.provenance[k] for k in _PUBLIC_PROVENANCE if k in v.provenance})
    return out


class _Routes:
    def __init__(self, service: Service) -> None:
        self.service = service
        self._single = TickBatcher(self._read_singles)

    def _read_singles(self, items: list[tuple[str, tuple[str, ...] | None, int]]) -> list[Any]:
        """Read the single-entity requests of one loop turn: one multi-get per feature list."""
        out: list[Any] = [None] * len(items)
        groups: dict[tuple[str, ...] | None, list[int]] = {}
        for i, (_, names, _) in enumerate(items):
            groups.setdefault(names, []).append(i)
        online = self.service.online
        for names, idx in groups.items():
            reads = online.get_features(
                [items[i][0] for i in idx], names, [items[i][2] for i in idx]
            )
            for i, read in zip(idx, reads, strict=True):
                out[i] = read
        return out

    # -- probes -------------------------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        checks = await self.service.readiness(request.deadline)
        ready = all(c["ok"] for c in checks.values())
        return json_response({"ready": ready, "checks": checks}, 200 if ready else 503)

    async def metrics(self, request: Request) -> Response:
        body = self.service.metrics.render()
        return Response(200, body, [(b"content-type", CONTENT_TYPE.encode())])

    async def openapi_json(self, request: Request) -> Response:
        return json_response(openapi_document())

    async def docs(self, request: Request) -> Response:
        return Response(200, DOCS_HTML.encode(), [(b"content-type", b"text/html; charset=utf-8")])

    # -- features -----------------------------------------------------------------------------

    async def _read(self, entities: list[str], names: list[str] | None, as_of: int | None, request):
        online = self.service.online
        if names is not None:
            unknown = [n for n in names if n not in online.feature_names]
            if unknown:
                raise HTTPError(
                    422,
                    "unknown_feature",
                    f"no feature {unknown[0]!r} in the online store (it serves: "
                    f"{', '.join(online.feature_names)})",
                    field="features",
                )
        if len(entities) == 1:
            when = as_of if as_of is not None else time.time_ns() // 1_000_000
            names_key = None if names is None else tuple(names)
            reads = [await self._single.submit((entities[0], names_key, when))]
        else:
            reads = online.get_features(entities, names, as_of)
        request.deadline.check("reading the online store")
        statuses: dict[str, int] = {}
        out = []
        for entity, features in zip(entities, reads, strict=True):
            for r in features.values():
                statuses[r.status] = statuses.get(r.status, 0) + 1
            out.append(
                {"entity_key": entity, "features": {n: r.to_json() for n, r in features.items()}}
            )
        self.service.metrics.count_features(statuses)
        return out

    async def features(self, request: Request) -> Response:
        key = check_key(request.params["entity_key"])
        names = request.query.get("features")
        wanted = [n for n in names.split(",") if n] if names else None
        as_of = _as_of(request.query.get("as_of"))
        [read] = await self._read([key], wanted, as_of, request)
        return json_response({**read, "as_of": as_of})

    async def batch_get(self, request: Request) -> Response:
        body = decode_body(request.body, BatchGet)
        if not 1 <= len(body.entities) <= MAX_BATCH_ENTITIES:
            raise HTTPError(
                422,
                "invalid",
                f"entities: 1 to {MAX_BATCH_ENTITIES} entity keys, got {len(body.entities)}",
                field="entities",
            )
        for i, e in enumerate(body.entities):
            check_key(e, f"entities[{i}]")
        if body.as_of is not None and body.as_of < 0:
            raise HTTPError(422, "invalid", "as_of must be >= 0 (epoch ms)", field="as_of")
        results = await self._read(body.entities, body.features, body.as_of, request)
        return json_response({"as_of": body.as_of, "results": results})

    # -- predictions --------------------------------------------------------------------------

    async def predict(self, request: Request) -> Response:
        parsed = prediction_request(request.body)
        answer = await self.service.predict(parsed, request.deadline)
        if "timeout" in answer:
            raise HTTPError(
                504,
                "deadline_exceeded",
                f"request {parsed.request_id!r} already ended: {answer['timeout']['reason']}",
            )
        return json_response(answer)

    async def submit(self, request: Request) -> Response:
        parsed = prediction_request(request.body)
        await self.service.submit(parsed, request.deadline)
        return json_response(
            {"request_id": parsed.request_id, "status": "accepted"},
            202,
            [("location", f"/v1/predictions/{parsed.request_id}")],
        )

    async def prediction(self, request: Request) -> Response:
        rid = check_key(request.params["request_id"], "request_id")
        found = await self.service.lookup(rid, request.deadline)
        if found is None:
            raise HTTPError(
                404,
                "not_found",
                f"no prediction for request {rid!r} yet",
                headers=[("retry-after", "1")],
            )
        return json_response(found)

    # -- models -------------------------------------------------------------------------------

    def _model(self, name: str, detail: bool) -> dict[str, Any]:
        registry = self.service.registry
        versions = registry.versions(name)
        routing = registry.routing(name)
        return {
            "name": name,
            "routing": routing.to_json(),
            "versions": [_version_json(v, detail) for v in versions],
        }

    async def models(self, request: Request) -> Response:
        def read() -> dict[str, Any]:
            registry = self.service.registry
            with registry.reading() as revision:
                models = [self._model(n, False) for n in registry.names()]
            return {"revision": revision, "models": models}

        body = await request.deadline.wait(asyncio.to_thread(read), "reading the model registry")
        return json_response(body)

    async def model(self, request: Request) -> Response:
        name = check_model_name(request.params["name"])

        def read() -> dict[str, Any]:
            with self.service.registry.reading() as revision:
                return {"revision": revision, **self._model(name, True)}

        try:
            body = await request.deadline.wait(
                asyncio.to_thread(read), "reading the model registry"
            )
        except ModelNotFoundError:
            raise HTTPError(404, "unknown_model", f"no model {name!r}", field="model") from None
        return json_response(body)

    async def route(self, request: Request) -> Response:
        name = check_model_name(request.params["name"])
        change = decode_body(request.body, RouteChange)
        actor = f"rest:{request.principal.name}"

        def apply() -> dict[str, Any]:
            routing = self.service.registry.route(
                name,
                live=change.live,
                split=change.split,
                experiment=change.experiment,
                shadow=change.shadow,
                clear_split=change.clear_split,
                actor=actor,
            )
            return routing.to_json()

        try:
            routing = await request.deadline.wait(
                asyncio.to_thread(apply), "changing the model registry"
            )
        except ModelNotFoundError:
            raise HTTPError(404, "unknown_model", f"no model {name!r}", field="model") from None
        except RegistryError as exc:
            raise HTTPError(422, "routing_refused", str(exc), field="body") from None
        self.service.refresh_metadata()
        return json_response({"name": name, "routing": routing})


def _as_of(raw: str | None) -> int | None:
    if raw is None:
        return None
    if not raw.isdigit():
        raise HTTPError(422, "invalid", "as_of must be epoch milliseconds >= 0", field="as_of")
    return int(raw)


def create_app(config: ServeConfig, service: Service | None = None) -> App:
    """Build the ASGI app of `config` (the `Service` opens the stores and the registry)."""
    service = service or Service(config)
    r = _Routes(service)
    routes = [
        Route("GET", "/healthz", r.healthz),
        Route("GET", "/readyz", r.readyz),
        Route("GET", "/metrics", r.metrics),
        Route("GET", "/openapi.json", r.openapi_json),
        Route("GET", "/docs", r.docs),
        Route("GET", "/v1/features/{entity_key}", r.features, "features:read"),
        Route("POST", "/v1/features:batch-get", r.batch_get, "features:read"),
        Route("POST", "/v1/predictions", r.predict, "predict"),
        Route("POST", "/v1/prediction-requests", r.submit, "predict"),
        Route("GET", "/v1/predictions/{request_id}", r.prediction, "predict"),
        Route("GET", "/v1/models", r.models, "predict"),
        Route("GET", "/v1/models/{name}", r.model, "predict"),
        Route("POST", "/v1/models/{name}/route", r.route, "admin"),
    ]
    app = App(
        routes,
        tokens=TokenStore(config.tokens),
        limiter=RateLimiter(config.rate_per_s, config.burst),
        max_body_bytes=config.max_body_bytes,
        deadline_ms=config.deadline_ms,
        observe=service.metrics.observe,
        startup=service.start,
        shutdown=service.stop,
    )
    app.service = service  # type: ignore[attr-defined]
    return app


def app_from_env() -> App:
    """Build the app from `STREAMML_SERVE_CONFIG` (the factory each worker process calls)."""
    return create_app(ServeConfig.from_env())
