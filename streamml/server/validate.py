"""Validation of what a request names: entity keys, model names, request ids, bodies.

Names from a request are only ever dictionary or RocksDB keys, never file paths, and they are
checked before use anyway: an entity key or request id is 1-256 UTF-8 bytes without control
characters; a model name follows the registry's rule (letters, digits, ``.``, ``_``, ``-``,
starting with a letter or digit, no ``..``, at most 128 characters). Prediction bodies are
checked by the flow's own parser (`streamml.operators.requests.parse_request`), so both ways in
accept the same requests; its refusal reason becomes the 422's `field`.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import msgspec
import orjson

from streamml.operators.records import DeadLetter, PredictionRequest
from streamml.operators.requests import parse_request
from streamml.server.http import HTTPError

__all__ = [
    "check_key",
    "check_model_name",
    "decode_body",
    "prediction_request",
]

_MODEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_FIELD_OF = {
    "blank": "body",
    "not_utf8": "body",
    "not_json": "body",
    "not_object": "body",
    "negative_ts": "ts",
    "ts_out_of_range": "ts",
    "account_too_long": "account",
    "context_too_large": "context",
}


def _invalid(field: str, detail: str) -> HTTPError:
    return HTTPError(422, "invalid", f"{field}: {detail}", field=field)


def check_key(value: str, what: str = "entity_key") -> str:
    """Return `value` if it is a valid entity key or request id, else raise 422."""
    size = len(value.encode("utf-8", errors="surrogatepass"))
    if not 1 <= size <= 256:
        raise _invalid(what, f"must be 1-256 UTF-8 bytes, got {size}")
    if _CONTROL.search(value):
        raise _invalid(what, "must not contain control characters")
    return value


def check_model_name(value: str) -> str:
    """Return `value` if it is a valid model name, else raise 422."""
    if not _MODEL.match(value) or ".." in value:
        raise _invalid(
            "model",
            "expected letters, digits, '.', '_' or '-' (starting with a letter or digit, "
            "no '..', at most 128 characters)",
        )
    return value


def decode_body(body: bytes, kind: type[Any]) -> Any:
    """Decode a JSON body into the msgspec struct `kind`; 422 naming the field if it is not."""
    try:
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as exc:
        text = str(exc)
        field = text.rsplit(" - at `", 1)[1].rstrip("`") if " - at `" in text else "body"
        field = field.removeprefix("$.") if field != "$" else "body"
        raise HTTPError(422, "invalid", text, field=field) from None
    except msgspec.DecodeError as exc:
        raise HTTPError(422, "invalid", f"body is not valid JSON: {exc}", field="body") from None


def prediction_request(body: bytes, now_ms: int | None = None) -> PredictionRequest:
    """Parse a prediction body (``model``, ``account``, ``context``, ``request_id``?, ``ts``?).

    A missing `request_id` gets a random one; a missing `ts` is now (epoch ms). Raises 422
    naming the field, with the flow's reason as the code.
    """
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise HTTPError(422, "not_json", f"body is not JSON: {exc}", field="body") from None
    if isinstance(obj, dict):
        changed = False
        if obj.get("request_id") is None:
            obj["request_id"] = uuid.uuid4().hex
            changed = True
        if obj.get("ts") is None:
            obj["ts"] = time.time_ns() // 1_000_000 if now_ms is None else now_ms
            changed = True
        if changed:
            body = orjson.dumps(obj)
    parsed = parse_request(body, "rest", 0)
    if isinstance(parsed, DeadLetter):
        reason = parsed.reason
        field = _FIELD_OF.get(reason) or reason.removeprefix("missing_").removeprefix("bad_")
        detail = parsed.detail or reason.replace("_", " ")
        raise HTTPError(422, reason, f"{field}: {detail}", field=field)
    check_key(parsed.request_id, "request_id")
    check_model_name(parsed.model)
    return parsed
