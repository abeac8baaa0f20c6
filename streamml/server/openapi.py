"""The OpenAPI 3.1 document of the REST service, and the interactive docs page (`/docs`).

Written out by hand from the routes in `streamml.server.app` (the service has no framework
that would derive it); `tests/server/test_app.py` checks that every route is documented.
The docs page is Swagger UI, loaded by the browser from the jsDelivr CDN.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DOCS_HTML", "openapi_document"]

_ERROR = {
    "type": "object",
    "properties": {
        "error": {"type": "string"},
        "detail": {"type": "string"},
        "field": {"type": "string", "description": "the invalid field (422)"},
        "stage": {"type": "string", "description": "what was running at the deadline (504)"},
    },
    "required": ["error", "detail"],
}
_FEATURE = {
    "type": "object",
    "properties": {
        "value": {"type": ["number", "null"]},
        "updated_at": {"type": ["integer", "null"], "description": "epoch ms"},
        "version": {"type": "string"},
        "status": {"enum": ["fresh", "stale", "missing", "fetched", "defaulted"]},
    },
}
_PREDICT_BODY = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "account": {"type": "string", "maxLength": 256},
        "context": {"type": "object"},
        "request_id": {"type": "string", "description": "default: a random id"},
        "ts": {"type": "integer", "description": "epoch ms; default: now"},
    },
    "required": ["model", "account"],
}
_PREDICTION = {
    "type": "object",
    "properties": {
        "request_id": {"type": "string"},
        "model": {"type": "string"},
        "version": {"type": "string"},
        "variant": {"type": "string"},
        "label": {"type": "string"},
        "probabilities": {"type": "object", "additionalProperties": {"type": "number"}},
        "features": {"type": "object", "additionalProperties": {"$ref": "#/$defs/Feature"}},
        "latency_ms": {"type": "object", "additionalProperties": {"type": "number"}},
        "shadows": {"type": "array", "items": {"type": "object"}},
        "sha256": {"type": "string"},
        "metadata_revision": {"type": "integer"},
    },
}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        401: "no or unknown bearer token",
        403: "the token lacks the scope",
        404: "not found",
        413: "body too large",
        422: "invalid input; `field` names it",
        429: "over the token's rate limit; see Retry-After",
        503: "not available",
        504: "the deadline passed; `stage` names what was slow",
    }
    return {
        str(c): {
            "description": text[c],
            "content": {"application/json": {"schema": {"$ref": "#/$defs/Error"}}},
        }
        for c in codes
    }


def _op(
    summary: str,
    scope: str | None,
    ok: dict[str, Any],
    errors: tuple[int, ...],
    *,
    body: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    auth = (401, 403, 429) if scope else ()
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {**ok, **_errors(*sorted(set(auth + errors)))},
    }
    if scope:
        op["security"] = [{"bearer": [scope]}]
        op["description"] = f"Needs a token with the `{scope}` scope (or `admin`)."
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if params:
        op["parameters"] = params
    return op


def _json_ok(schema: dict[str, Any], code: str = "200", text: str = "OK") -> dict[str, Any]:
    return {code: {"description": text, "content": {"application/json": {"schema": schema}}}}


def _path(name: str, desc: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": desc,
    }


def openapi_document() -> dict[str, Any]:
    """Return the OpenAPI document (a JSON-ready dict)."""
    obj = {"type": "object"}
    features = {
        "type": "object",
        "properties": {
            "entity_key": {"type": "string"},
            "features": {"type": "object", "additionalProperties": {"$ref": "#/$defs/Feature"}},
        },
    }
    paths = {
        "/healthz": {"get": _op("The process is alive", None, _json_ok(obj), ())},
        "/readyz": {
            "get": _op(
                "Stores open, registry readable, broker reachable when configured",
                None,
                _json_ok(obj),
                (503,),
            )
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text format)",
                "responses": {"200": {"description": "OK", "content": {"text/plain": {}}}},
            }
        },
        "/v1/features/{entity_key}": {
            "get": _op(
                "An entity's feature values with updated_at, version and freshness",
                "features:read",
                _json_ok(features),
                (422, 504),
                params=[
                    _path("entity_key", "the entity (account), 1-256 UTF-8 bytes"),
                    {
                        "name": "features",
                        "in": "query",
                        "schema": {"type": "string"},
                        "description": "comma-separated names (default: all)",
                    },
                    {
                        "name": "as_of",
                        "in": "query",
                        "schema": {"type": "integer"},
                        "description": "epoch ms (default: now)",
                    },
                ],
            )
        },
        "/v1/features:batch-get": {
            "post": _op(
                "Feature values of up to 1000 entities",
                "features:read",
                _json_ok(
                    {
                        "type": "object",
                        "properties": {"results": {"type": "array", "items": features}},
                    }
                ),
                (413, 422, 504),
                body={
                    "type": "object",
                    "properties": {
                        "entities": {"type": "array", "items": {"type": "string"}},
                        "features": {"type": "array", "items": {"type": "string"}},
                        "as_of": {"type": "integer"},
                    },
                    "required": ["entities"],
                },
            )
        },
        "/v1/predictions": {
            "post": _op(
                "Score now: select the version, assemble features, score, record",
                "predict",
                _json_ok({"$ref": "#/$defs/Prediction"}),
                (404, 413, 422, 503, 504),
                body=_PREDICT_BODY,
            )
        },
        "/v1/prediction-requests": {
            "post": _op(
                "Push the request to the requests topic for the prediction flow",
                "predict",
                _json_ok(obj, "202", "Accepted; poll GET /v1/predictions/{request_id}"),
                (413, 422, 503, 504),
                body=_PREDICT_BODY,
            )
        },
        "/v1/predictions/{request_id}": {
            "get": _op(
                "The recorded prediction of a request (404 with Retry-After before it exists)",
                "predict",
                _json_ok({"$ref": "#/$defs/Prediction"}),
                (404, 422, 504),
                params=[_path("request_id", "the request's id")],
            )
        },
        "/v1/models": {
            "get": _op("Models: versions, stages, routing", "predict", _json_ok(obj), (504,))
        },
        "/v1/models/{name}": {
            "get": _op(
                "A model: versions, stages, routing, feature contract, training metrics",
                "predict",
                _json_ok(obj),
                (404, 422, 504),
                params=[_path("name", "model name")],
            )
        },
        "/v1/models/{name}/route": {
            "post": _op(
                "Change the routing: live version, A/B split, experiment, shadows",
                "admin",
                _json_ok(obj),
                (404, 413, 422, 504),
                params=[_path("name", "model name")],
                body={
                    "type": "object",
                    "properties": {
                        "live": {"type": "string"},
                        "split": {"type": "object", "additionalProperties": {"type": "number"}},
                        "experiment": {"type": "string"},
                        "shadow": {"type": "array", "items": {"type": "string"}},
                        "clear_split": {"type": "boolean"},
                    },
                },
            )
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "streamml",
            "version": "1",
            "description": "Predictions, features, models.",
        },
        "paths": paths,
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "$defs": {"Error": _ERROR, "Feature": _FEATURE, "Prediction": _PREDICTION},
    }


DOCS_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>streamml API</title>
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css">
</head><body><div id="ui"></div>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui"});</script>
</body></html>
"""
"""The interactive docs page (Swagger UI reading `/openapi.json`)."""
