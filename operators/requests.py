"""Decode prediction requests; anything that is not a valid request becomes a dead letter.

A valid request is a JSON object with

- `request_id`: a non-empty string of at most 256 UTF-8 bytes;
- `model`: a non-empty string of at most 256 UTF-8 bytes;
- `account`: as for events, a non-empty string of at most 256 UTF-8 bytes;
- `ts`: as for events, an integer >= 0 in epoch milliseconds (a number equal to an integer is
  accepted);
- `context` (optional, absent or null means `{}`): a JSON object of at most `max_context_bytes`
  bytes once re-encoded compactly.

Other fields are ignored. Dead-letter reasons: `blank`, `not_utf8`, `not_json`, `not_object`,
`missing_request_id`, `bad_request_id`, `missing_model`, `bad_model`, `missing_account`,
`bad_account`, `account_too_long`, `missing_ts`, `bad_ts`, `negative_ts`, `ts_out_of_range`,
`bad_context`, `context_too_large`, and `null_value` for a message without a value.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import orjson
from bytewax import operators as op
from bytewax.dataflow import Stream, operator
from streamml.operators.decode import (
    InvalidRecord,
    _check_account,
    _check_ts_number,
    json_object,
)
from streamml.operators.records import (
    DEAD_LETTER_RAW_LIMIT,
    DeadLetter,
    LinesChunk,
    PredictionRequest,
    RecordList,
)

__all__ = [
    "DEFAULT_MAX_CONTEXT_BYTES",
    "MAX_ID_BYTES",
    "RequestDecodeOutputs",
    "decode_request_batch",
    "decode_requests",
    "parse_request",
]

MAX_ID_BYTES = 256
"""Longest `request_id` and `model`, in UTF-8 bytes."""
DEFAULT_MAX_CONTEXT_BYTES = 16384
"""Largest `context` accepted by default, in bytes of compact JSON."""


def _check_name(value: object, what: str) -> str:
    if value is None:
        raise InvalidRecord(f"missing_{what}")
    if not isinstance(value, str):
        raise InvalidRecord(f"bad_{what}", f"{what} must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidRecord(f"bad_{what}", f"{what} is empty")
    size = len(value.encode("utf-8", errors="surrogatepass"))
    if size > MAX_ID_BYTES:
        raise InvalidRecord(f"bad_{what}", f"{what} is {size} bytes > {MAX_ID_BYTES}")
    return value


def _parse(raw: bytes, partition: str, position: int, max_context_bytes: int) -> PredictionRequest:
    if not raw.strip():
        raise InvalidRecord("blank")
    obj = json_object(raw)
    request_id = _check_name(obj.get("request_id"), "request_id")
    model = _check_name(obj.get("model"), "model")
    account = _check_account(obj.get("account")).decode("utf-8")
    ts = _check_ts_number(obj.get("ts"))
    context = obj.get("context")
    if context is None:
        context = {}
    elif not isinstance(context, dict):
        raise InvalidRecord(
            "bad_context", f"context must be an object, got {type(context).__name__}"
        )
    else:
        size = len(orjson.dumps(context))
        if size > max_context_bytes:
            raise InvalidRecord("context_too_large", f"{size} bytes > {max_context_bytes}")
    return PredictionRequest(request_id, model, account, ts, context, partition, position, len(raw))


def parse_request(
    raw: bytes,
    partition: str,
    position: int,
    *,
    max_context_bytes: int = DEFAULT_MAX_CONTEXT_BYTES,
) -> PredictionRequest | DeadLetter:
    """Parse one raw request read at `position` of `partition`; never raises on bad input."""
    try:
        return _parse(raw, partition, position, max_context_bytes)
    except InvalidRecord as exc:
        return DeadLetter(exc.reason, raw[:DEAD_LETTER_RAW_LIMIT], partition, position, exc.detail)


def decode_request_batch(
    item: LinesChunk | RecordList | PredictionRequest,
    *,
    max_context_bytes: int = DEFAULT_MAX_CONTEXT_BYTES,
) -> list[PredictionRequest | DeadLetter]:
    """Decode a chunk of JSON lines or a list of message values into requests and dead letters.

    Results keep source order; a `PredictionRequest` (from a generator) passes through.
    """
    if isinstance(item, PredictionRequest):
        return [item]
    parse = functools.partial(parse_request, max_context_bytes=max_context_bytes)
    if isinstance(item, RecordList):
        return [
            DeadLetter("null_value", b"", item.partition, pos)
            if value is None
            else parse(value, item.partition, pos)
            for value, pos in zip(item.values, item.positions, strict=True)
        ]
    if isinstance(item, LinesChunk):
        if item.fmt != "jsonl":
            raise ValueError(
                f"prediction requests are JSON lines, got a {item.fmt!r} chunk from "
                f"{item.partition}; give request files a .jsonl name"
            )
        out: list[PredictionRequest | DeadLetter] = []
        offset = 0
        data = item.data
        while offset < len(data):
            end = data.find(b"\n", offset)
            end = len(data) if end < 0 else end
            out.append(parse(data[offset:end], item.partition, item.base + offset))
            offset = end + 1
        return out
    raise TypeError(
        f"cannot decode {type(item).__name__} as prediction requests; expected LinesChunk, "
        "RecordList or PredictionRequest"
    )


@dataclass(frozen=True)
class RequestDecodeOutputs:
    """Streams out of `decode_requests`: valid requests and dead letters."""

    requests: Stream[PredictionRequest]
    dead: Stream[DeadLetter] = field(repr=False)


@operator
def decode_requests(
    step_id: str,
    up: Stream[LinesChunk | RecordList | PredictionRequest],
    *,
    max_context_bytes: int = DEFAULT_MAX_CONTEXT_BYTES,
) -> RequestDecodeOutputs:
    """Decode raw batches into prediction requests and dead letters; never raises on bad input."""
    decode = functools.partial(decode_request_batch, max_context_bytes=max_context_bytes)
    parsed = op.flat_map("decode", up, decode)
    split = op.branch("split", parsed, lambda x: isinstance(x, PredictionRequest))
    return RequestDecodeOutputs(split.trues, split.falses)
