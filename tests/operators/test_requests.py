import json
import math
from typing import Any

import orjson
import pytest
from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.onnx_models import RequestGeneratorConfig, generate_requests
from streamml.operators.records import DeadLetter, LinesChunk, PredictionRequest, RecordList
from streamml.operators.request_source import RequestGeneratorSource
from streamml.operators.requests import decode_request_batch, decode_requests, parse_request


def _reject(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("out of range")
    return value


def _has_surrogate(obj: Any) -> bool:
    if isinstance(obj, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in obj)
    if isinstance(obj, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in obj.items())
    if isinstance(obj, list):
        return any(_has_surrogate(v) for v in obj)
    return False


def _name(obj: dict, key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return f"missing_{key}"
    if not isinstance(value, str) or not value or len(value.encode()) > 256:
        return f"bad_{key}"
    return None


def spec_request(raw: bytes, max_context: int = 16384) -> str | dict:
    """Independent reading of the request specification: a reason, or the request's JSON."""
    if not raw.strip():
        return "blank"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "not_utf8"
    try:
        obj = json.loads(text, parse_constant=_reject, parse_float=_finite)
    except ValueError:
        return "not_json"
    if _has_surrogate(obj):
        return "not_json"
    if not isinstance(obj, dict):
        return "not_object"
    for key in ("request_id", "model"):
        if reason := _name(obj, key):
            return reason
    account = obj.get("account")
    if account is None:
        return "missing_account"
    if not isinstance(account, str) or not account:
        return "bad_account"
    if len(account.encode()) > 256:
        return "account_too_long"
    ts = obj.get("ts")
    if ts is None:
        return "missing_ts"
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        return "bad_ts"
    if isinstance(ts, float):
        if not ts.is_integer():
            return "bad_ts"
        ts = int(ts)
    if ts < 0:
        return "negative_ts"
    if ts >= 2**63:
        return "ts_out_of_range"
    context = obj.get("context")
    if context is None:
        context = {}
    if not isinstance(context, dict):
        return "bad_context"
    if len(orjson.dumps(context)) > max_context:
        return "context_too_large"
    return {
        "request_id": obj["request_id"],
        "model": obj["model"],
        "account": account,
        "ts": ts,
        "context": context,
    }


def parsed(raw: bytes, **kwargs: Any) -> str | dict:
    got = parse_request(raw, "p", 17, **kwargs)
    if isinstance(got, DeadLetter):
        assert got.partition == "p" and got.position == 17
        assert got.raw == raw[:1024]
        return got.reason
    assert got.partition == "p" and got.position == 17 and got.raw_size == len(raw)
    return got.to_json()


VALID = {"request_id": "r1", "model": "m", "account": "a", "ts": 5, "context": {"x": 1}}


def with_(**changes: Any) -> bytes:
    obj = {**VALID, **changes}
    return orjson.dumps({k: v for k, v in obj.items() if v is not ...})


CASES = [
    (b"", "blank"),
    (b"  \t\r", "blank"),
    (b"\xff\xfe{}", "not_utf8"),
    (b"{nope", "not_json"),
    (b'{"request_id": NaN}', "not_json"),
    (b"[1, 2]", "not_object"),
    (b'"text"', "not_object"),
    (with_(request_id=...), "missing_request_id"),
    (with_(request_id=None), "missing_request_id"),
    (with_(request_id=""), "bad_request_id"),
    (with_(request_id=7), "bad_request_id"),
    (with_(request_id="r" * 257), "bad_request_id"),
    (with_(request_id="é" * 128), VALID | {"request_id": "é" * 128}),
    (with_(model=...), "missing_model"),
    (with_(model=["m"]), "bad_model"),
    (with_(model=""), "bad_model"),
    (with_(model="m" * 257), "bad_model"),
    (with_(account=...), "missing_account"),
    (with_(account=5), "bad_account"),
    (with_(account=""), "bad_account"),
    (with_(account="é" * 129), "account_too_long"),
    (with_(ts=...), "missing_ts"),
    (with_(ts="5"), "bad_ts"),
    (with_(ts=True), "bad_ts"),
    (with_(ts=5.5), "bad_ts"),
    (with_(ts=-1), "negative_ts"),
    (with_(ts=2**63), "ts_out_of_range"),
    (with_(ts=5.0), VALID),
    (with_(context=[1]), "bad_context"),
    (with_(context="x"), "bad_context"),
    (with_(context=None), VALID | {"context": {}}),
    (with_(context=...), VALID | {"context": {}}),
    (with_(context={"k": "v" * 16380}), "context_too_large"),
    (with_(context={"k": "v" * 16370}), VALID | {"context": {"k": "v" * 16370}}),
    (with_(extra={"ignored": True}), VALID),
]


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_each_rule_of_a_request(raw: bytes, expected: str | dict) -> None:
    assert parsed(raw) == expected
    assert spec_request(raw) == expected


def test_the_context_limit_is_configurable() -> None:
    raw = with_(context={"k": "v" * 100})
    assert parsed(raw, max_context_bytes=100) == "context_too_large"
    assert parsed(raw, max_context_bytes=110) == VALID | {"context": {"k": "v" * 100}}


@given(raw=st.binary(max_size=300))
@settings(max_examples=500, deadline=None)
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    assert parsed(raw) == spec_request(raw)


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)
ABSENT = object()


def mostly(valid: st.SearchStrategy, invalid: st.SearchStrategy) -> st.SearchStrategy:
    """Valid values 4 times in 5, so every later rule of a request gets exercised too."""
    return st.integers(0, 4).flatmap(lambda i: invalid if i == 0 else valid)


field_values = {
    "request_id": mostly(st.text(min_size=1, max_size=12), st.just("x" * 257) | json_scalars),
    "model": mostly(st.text(min_size=1, max_size=12), st.just("m" * 257) | json_scalars),
    "account": mostly(st.text(min_size=1, max_size=12), st.just("é" * 129) | json_scalars),
    "ts": mostly(
        st.integers(0, 2**63 - 1) | st.integers(0, 10**6).map(float),
        st.integers(min_value=-5, max_value=2**64)
        | st.floats(min_value=-5, max_value=2e19)
        | json_values,
    ),
    "context": mostly(st.dictionaries(st.text(max_size=5), json_values, max_size=4), json_values),
}
requests_ish = st.fixed_dictionaries(
    {k: mostly(v, st.just(ABSENT)) for k, v in field_values.items()}
).map(lambda d: {k: v for k, v in d.items() if v is not ABSENT})


@given(obj=requests_ish, extra=st.dictionaries(st.text(max_size=4), json_values, max_size=2))
@settings(max_examples=800, deadline=None)
def test_json_objects_follow_the_specification(obj: dict, extra: dict) -> None:
    raw = json.dumps({**extra, **obj}).encode()
    assert parsed(raw, max_context_bytes=60) == spec_request(raw, max_context=60)


valid_requests = st.fixed_dictionaries(
    {
        "request_id": st.text(min_size=1, max_size=20),
        "model": st.text(min_size=1, max_size=20),
        "account": st.text(min_size=1, max_size=20),
        "ts": st.integers(0, 2**63 - 1),
        "context": st.dictionaries(st.text(max_size=5), json_values, max_size=5),
    }
)


@given(request=valid_requests, indent=st.booleans())
@settings(max_examples=300, deadline=None)
def test_valid_requests_round_trip(request: dict, indent: bool) -> None:
    raw = orjson.dumps(request, option=orjson.OPT_INDENT_2 if indent else 0)
    got = parse_request(raw, "topic:3", 99)
    assert isinstance(got, PredictionRequest)
    assert got.to_json() == request
    assert (got.partition, got.position, got.raw_size) == ("topic:3", 99, len(raw))


LINES = [VALID, b"not json", b"", {**VALID, "request_id": "r2", "ts": -1}, {**VALID, "model": "n"}]


def _line(x: dict | bytes) -> bytes:
    return x if isinstance(x, bytes) else orjson.dumps(x)


def test_a_chunk_of_lines_keeps_order_and_byte_positions() -> None:
    data = b"\n".join(_line(x) for x in LINES) + b"\r\n" + _line({**VALID, "request_id": "last"})
    got = decode_request_batch(LinesChunk("file:x", "jsonl", data, 1000))
    positions, offset = [], 1000
    for line in data.split(b"\n"):
        positions.append(offset)
        offset += len(line) + 1
    assert [g.position for g in got] == positions
    assert [g.reason if isinstance(g, DeadLetter) else g.request_id for g in got] == [
        "r1",
        "not_json",
        "blank",
        "negative_ts",
        "r1",
        "last",
    ]
    assert got[4].model == "n" and got[4].raw_size == len(_line(LINES[4])) + 1
    assert decode_request_batch(LinesChunk("f", "jsonl", data + b"\n", 0))[-1].request_id == "last"
    with pytest.raises(ValueError, match="JSON lines"):
        decode_request_batch(LinesChunk("f", "csv", data, 0, ("a",)))


def test_message_values_keep_their_offsets() -> None:
    values = [_line(VALID), None, b"[]"]
    got = decode_request_batch(RecordList("topic:0", values, [7, 8, 12]))
    assert isinstance(got[0], PredictionRequest) and got[0].position == 7
    assert (got[1].reason, got[1].position) == ("null_value", 8)
    assert (got[2].reason, got[2].position) == ("not_object", 12)


def test_the_operator_splits_requests_from_dead_letters() -> None:
    passthrough = PredictionRequest("g1", "m", "a", 1, {}, "gen", 0, 10)
    items = [
        LinesChunk("file:x", "jsonl", b"\n".join(_line(x) for x in LINES) + b"\n", 0),
        RecordList("topic:0", [_line(VALID), None], [3, 4]),
        passthrough,
    ]
    flow = Dataflow("requests")
    outs = decode_requests("decode", op.input("in", flow, TestingSource(items)))
    requests: list[PredictionRequest] = []
    dead: list[DeadLetter] = []
    op.output("requests", outs.requests, TestingSink(requests))
    op.output("dead", outs.dead, TestingSink(dead))
    run_main(flow)
    expected = [x for item in items for x in decode_request_batch(item)]
    assert requests == [x for x in expected if isinstance(x, PredictionRequest)]
    assert dead == [x for x in expected if isinstance(x, DeadLetter)]
    assert [r.request_id for r in requests] == ["r1", "r1", "r1", "g1"]
    assert sorted(d.reason for d in dead) == ["blank", "negative_ts", "not_json", "null_value"]


CONFIG = RequestGeneratorConfig(requests=2500, accounts=1000, seed=4, partitions=2, batch_size=700)


def test_the_generator_source_emits_the_generated_requests() -> None:
    flow = Dataflow("gen")
    got: list[PredictionRequest] = []
    op.output("out", op.input("in", flow, RequestGeneratorSource(CONFIG)), TestingSink(got))
    run_main(flow)
    assert len(got) == 2500
    for partition in range(2):
        mine = sorted(
            (r for r in got if r.partition == f"req:4:{partition}"), key=lambda r: r.position
        )
        assert [r.position for r in mine] == list(range(1250))
        assert [r.to_json() for r in mine] == generate_requests(CONFIG, partition).requests
        assert all(r.raw_size == len(orjson.dumps(r.to_json())) for r in mine)
    truth = list(RequestGeneratorSource(CONFIG).truth())
    assert sorted(t.request_id for t in truth) == sorted(r.request_id for r in got)


def test_the_generator_source_resumes_at_its_snapshot() -> None:
    source = RequestGeneratorSource(CONFIG)
    part = source.build_part("in", "req:4:1", None)
    first = part.next_batch()
    assert [r.position for r in first] == list(range(700))
    assert part.snapshot() == 700
    resumed = source.build_part("in", "req:4:1", part.snapshot())
    rest = resumed.next_batch()
    assert rest == part.next_batch()
    assert [r.position for r in rest] == list(range(700, 1250))
    with pytest.raises(StopIteration):
        resumed.next_batch()
