"""Decoding events of a declared source: Arrow's fast path agrees with the line decoder."""

from datetime import UTC, datetime

import numpy as np
import orjson
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators.decode_source import SourceSchema, _Builder, _json_object, decode_source
from streamml.operators.records import LinesChunk, RecordList
from streamml.state.definitions import parse_definitions

DEFS = """
[entities.account]
[sources.tests]
kind = "file"
entity = "account"
key = "acct"
time = "at"
fields = { ratio = "number", latency = "number", band = "string" }
filters = { band = ["5GHz", "6GHz"] }

[sources.iso]
kind = "file"
entity = "account"
key = "acct"
time = "at"
time_format = "iso8601"
fields = { ratio = "number" }

[features.ratio_mean]
source = "tests"
aggregation = "mean"
field = "ratio"
bucket = "1h"
window = "1d"
ttl = "1h"

[features.latency_max]
source = "tests"
aggregation = "max"
field = "latency"
bucket = "1h"
window = "1d"
ttl = "1h"

[features.iso_ratio]
source = "iso"
aggregation = "last"
field = "ratio"
bucket = "1h"
window = "1d"
ttl = "1h"
"""
D = parse_definitions(DEFS)
SCHEMA = SourceSchema.of(D.sources["tests"], D.of_source("tests"))
ISO = SourceSchema.of(D.sources["iso"], D.of_source("iso"))


def _slow(schema, lines, base=0):
    b = _Builder(schema, "p")
    pos = base
    for line in lines:
        b.add(line, pos, _json_object)
        pos += len(line) + 1
    return b.batch(), b.dead, b.filtered


def _same(decoded, slow):
    events, dead, filtered = slow
    got = decoded.events
    assert got.accounts.to_pylist() == events.accounts.to_pylist()
    assert got.ts.tolist() == events.ts.tolist()
    assert got.positions.tolist() == events.positions.tolist()
    for k in SCHEMA.numbers:
        assert got.fields[k].tolist() == events.fields[k].tolist()
    assert [(d.reason, d.position) for d in decoded.dead] == [(d.reason, d.position) for d in dead]
    assert decoded.filtered == filtered


good = st.fixed_dictionaries(
    {
        "acct": st.sampled_from(["a", "b", "ü-1"]),
        "at": st.integers(0, 10**13),
        "ratio": st.floats(-1e6, 1e6, allow_nan=False) | st.integers(-5, 5),
        "latency": st.floats(0, 1e4),
        "band": st.sampled_from(["5GHz", "6GHz", "2.4GHz"]),
    }
)
bad = st.sampled_from(
    [
        {"acct": "a", "at": 5, "latency": 1, "band": "5GHz"},
        {"acct": "a", "at": 5, "ratio": "1.5", "latency": 1, "band": "5GHz"},
        {"acct": "a", "at": 5, "ratio": True, "latency": 1, "band": "5GHz"},
        {"acct": "a", "at": 5, "ratio": 1e10, "latency": 1, "band": "5GHz"},
        {"acct": "", "at": 5, "ratio": 1, "latency": 1, "band": "5GHz"},
        {"at": 5, "ratio": 1, "latency": 1, "band": "5GHz"},
        {"acct": "a", "at": -5, "ratio": 1, "latency": 1, "band": "5GHz"},
        {"acct": "a", "at": 5.5, "ratio": 1, "latency": 1, "band": "5GHz"},
        {"acct": "a", "at": 5, "ratio": 1, "latency": 1},
        "not an object",
    ]
)


@settings(max_examples=200, deadline=None)
@given(st.lists(good | bad, min_size=1, max_size=30), st.booleans())
def test_fast_path_and_line_decoder_agree(objs, as_records):
    lines = [orjson.dumps(o) if not isinstance(o, str) else o.encode() for o in objs]
    slow = _slow(SCHEMA, lines)
    if as_records:
        positions = []
        pos = 0
        for line in lines:
            positions.append(pos)
            pos += len(line) + 1
        decoded = decode_source(SCHEMA, RecordList("p", lines, positions))
    else:
        decoded = decode_source(SCHEMA, LinesChunk("p", "jsonl", b"\n".join(lines) + b"\n", 0))
    _same(decoded, slow)


def test_reasons_name_the_field_and_filters_drop():
    lines = [
        b'{"acct": "a", "at": 1, "latency": 2, "band": "5GHz"}',
        b'{"acct": "a", "at": 1, "ratio": "x", "latency": 2, "band": "5GHz"}',
        b'{"acct": "a", "at": 1, "ratio": 1, "latency": 2, "band": "2.4GHz"}',
        b'{"acct": "a", "at": 1, "ratio": 1, "latency": 2, "band": "6GHz"}',
    ]
    d = decode_source(SCHEMA, LinesChunk("p", "jsonl", b"\n".join(lines) + b"\n", 0))
    assert [x.reason for x in d.dead] == ["missing_ratio", "bad_ratio"]
    assert d.filtered == 1
    assert len(d.events) == 1 and d.events.fields["ratio"].tolist() == [1.0]


def test_iso_times_and_csv():
    lines = [
        b'{"acct": "a", "at": "2026-11-29T12:00:00Z", "ratio": 0.5}',
        b'{"acct": "a", "at": "2026-11-29T13:00:00+01:00", "ratio": 0.75}',
        b'{"acct": "a", "at": "2026-11-29T12:00:00", "ratio": 1}',
    ]
    d = decode_source(ISO, LinesChunk("p", "jsonl", b"\n".join(lines) + b"\n", 0))
    noon = int(datetime(2026, 11, 29, 12, tzinfo=UTC).timestamp() * 1000)
    assert d.events.ts.tolist() == [noon] * 2
    assert [x.reason for x in d.dead] == ["bad_at"]
    csv = b"acct,at,ratio,latency,band\na,5,0.5,3,5GHz\nb,6,,3,5GHz\nc,7,1,3,2.4GHz\n"
    header_end = csv.index(b"\n") + 1
    chunk = LinesChunk(
        "p", "csv", csv[header_end:], header_end, ("acct", "at", "ratio", "latency", "band")
    )
    d = decode_source(SCHEMA, chunk)
    assert d.events.accounts.to_pylist() == [b"a"]
    assert np.array_equal(d.events.fields["latency"], [3.0])
    assert [x.reason for x in d.dead] == ["missing_ratio"] and d.filtered == 1
