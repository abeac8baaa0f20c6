import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.operators.decode import (
    _decode_records_one_by_one,
    decode_chunk,
    decode_records,
    one_line_values,
)
from streamml.operators.records import LinesChunk, RecordList, positions_array

HEADER = ("account", "ts", "code")


def _reject(name):
    raise ValueError(f"{name} is not JSON")


def spec_json(line: bytes):
    """Independent reading of the event specification for one JSON line."""
    if not line.strip():
        return "blank"
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return "not_utf8"
    try:
        obj = json.loads(text, parse_constant=_reject)
    except ValueError:
        return "not_json"
    if not isinstance(obj, dict):
        return "not_object"
    account = obj.get("account")
    if account is None:
        return "missing_account"
    if not isinstance(account, str) or account == "":
        return "bad_account"
    if len(account.encode("utf-8", "surrogatepass")) > 256:
        return "account_too_long"
    ts = obj.get("ts")
    if ts is None:
        return "missing_ts"
    if isinstance(ts, bool) or not isinstance(ts, (int, float)):
        return "bad_ts"
    if isinstance(ts, float):
        if ts != ts or ts in (float("inf"), float("-inf")) or not ts.is_integer():
            return "bad_ts"
        ts = int(ts)
    if ts < 0:
        return "negative_ts"
    if ts >= 2**63:
        return "ts_out_of_range"
    return (account.encode(), ts)


def decode_lines(lines: list[bytes], fmt: str):
    data = b"".join(line + b"\n" for line in lines)
    d = decode_chunk(LinesChunk("p", fmt, data, 100, HEADER if fmt == "csv" else None))
    got = {}
    for a, t, p in zip(
        d.events.accounts.to_pylist(),
        d.events.ts.tolist(),
        d.events.positions.tolist(),
        strict=True,
    ):
        got[p] = (a, t)
    for dead in d.dead:
        assert dead.position not in got
        got[dead.position] = dead.reason
        assert len(dead.raw) <= 1024
    assert d.read == len(lines)
    offsets = []
    pos = 100
    for line in lines:
        offsets.append(pos)
        pos += len(line) + 1
    assert sorted(got) == offsets
    assert list(d.events.positions) == sorted(d.events.positions)
    return [got[o] for o in offsets]


JSON_CASES = [
    (b'{"account": "a1", "ts": 5, "code": "E1"}', (b"a1", 5)),
    (b'{"account": "a1", "ts": 5.0}', (b"a1", 5)),
    (b'{"account": "a1", "ts": 5.5}', "bad_ts"),
    (b'{"account": "a1", "ts": -1}', "negative_ts"),
    (b'{"account": "a1", "ts": true}', "bad_ts"),
    (b'{"account": "a1", "ts": "5"}', "bad_ts"),
    (b'{"account": "a1", "ts": 1e400}', "not_json"),
    (b'{"account": "a1"}', "missing_ts"),
    (b'{"ts": 5}', "missing_account"),
    (b'{"account": "", "ts": 5}', "bad_account"),
    (b'{"account": 7, "ts": 5}', "bad_account"),
    (b'{"account": "' + b"x" * 257 + b'", "ts": 5}', "account_too_long"),
    (b'{"account": "' + b"x" * 256 + b'", "ts": 5}', (b"x" * 256, 5)),
    (b"[1, 2]", "not_object"),
    (b"hello", "not_json"),
    (b"", "blank"),
    (b"   ", "blank"),
    (b"\xff\xfe\x00junk", "not_utf8"),
    (b'{"account": "a", "ts": 5', "not_json"),
]


@pytest.mark.parametrize(("line", "expected"), JSON_CASES)
def test_json_lines(line, expected):
    assert decode_lines([line], "jsonl") == [expected]


def test_json_chunk_mixes_good_and_bad_in_order():
    lines = [c[0] for c in JSON_CASES]
    assert decode_lines(lines, "jsonl") == [c[1] for c in JSON_CASES]


def test_dead_letter_raw_is_cut_to_one_kib():
    line = b'{"account": 1, "pad": "' + b"z" * 5000 + b'"}'
    d = decode_chunk(LinesChunk("p", "jsonl", line + b"\n", 0))
    assert d.dead[0].reason == "bad_account" and len(d.dead[0].raw) == 1024


def test_kafka_records_with_null_values():
    d = decode_records(
        RecordList("kafka:t:0", [b'{"account": "a", "ts": 1}', None, b"x"], [10, 11, 12])
    )
    assert d.events.positions.tolist() == [10]
    assert [(x.reason, x.position) for x in d.dead] == [("null_value", 11), ("not_json", 12)]


CSV_CASES = [
    (b"a1,5,E1", (b"a1", 5)),
    (b"a1,5,", (b"a1", 5)),
    (b"a1,0005,E1", (b"a1", 5)),
    (b"a1,5.0,E1", (b"a1", 5)),
    (b"a1,5.5,E1", "bad_ts"),
    (b"a1,-3,E1", "negative_ts"),
    (b"a1,nan,E1", "bad_ts"),
    (b"a1,inf,E1", "bad_ts"),
    (b"a1,,E1", "missing_ts"),
    (b",5,E1", "missing_account"),
    (b"a1,5", "bad_csv"),
    (b"a1,5,E1,extra", "bad_csv"),
    (b'"a,1",5,E1', (b"a,1", 5)),
    (b"a1,5,E1\r", (b"a1", 5)),
    (b"", "blank"),
    (b"\xff\xfe,5,E1", "not_utf8"),
    (b"x" * 257 + b",5,E1", "account_too_long"),
    (b"x" * 256 + b",5,E1", (b"x" * 256, 5)),
    (b"a1,99999999999999999999,E1", "ts_out_of_range"),
    (b"a1,1_000,E1", "bad_ts"),
    (b"a1,--9,E1", "bad_ts"),
    (b"a1,+9,E1", (b"a1", 9)),
    ("a1,\u0661\u0662,E1".encode(), "bad_ts"),
    ("ü,7,E1".encode(), ("ü".encode(), 7)),
]


@pytest.mark.parametrize(("line", "expected"), CSV_CASES)
def test_csv_lines(line, expected):
    assert decode_lines([line], "csv") == [expected]


def test_csv_chunk_mixes_good_and_bad_in_order():
    lines = [c[0] for c in CSV_CASES] * 3
    assert decode_lines(lines, "csv") == [c[1] for c in CSV_CASES] * 3


def test_all_valid_csv_chunk_takes_every_line():
    lines = [f"acct-{i % 7},{1000 + i},E1".encode() for i in range(500)]
    got = decode_lines(lines, "csv")
    assert got == [(f"acct-{i % 7}".encode(), 1000 + i) for i in range(500)]


csv_fields = st.one_of(
    st.from_regex(r"[a-z0-9\-]{0,6}", fullmatch=True),
    st.text(alphabet=' ,"\r\x00ü9.-+e_', max_size=5),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(csv_fields, st.one_of(st.integers(-5, 10**19).map(str), csv_fields), csv_fields),
        max_size=25,
    )
)
def test_csv_chunk_equals_line_by_line(rows):
    lines = [",".join(r).encode() for r in rows]
    lines = [line for line in lines if b"\n" not in line]
    whole = decode_lines(lines, "csv")
    one_by_one = [decode_lines([line], "csv")[0] for line in lines]
    assert whole == one_by_one


json_events = st.fixed_dictionaries(
    {
        "account": st.one_of(st.text(max_size=4), st.integers(), st.none()),
        "ts": st.one_of(
            st.integers(-3, 2**62), st.floats(allow_nan=True), st.booleans(), st.text(max_size=3)
        ),
    },
    optional={"code": st.text(max_size=3), "nested": st.just({"x": [1]})},
).map(lambda d: json.dumps(d).encode())
"""JSON event values, valid and not: wrong types, missing fields, extra fields."""


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            json_events,
            st.binary(max_size=12),
        ),
        max_size=20,
    )
)
def test_json_lines_match_the_specification(lines):
    lines = [line for line in lines if b"\n" not in line]
    got = decode_lines(lines, "jsonl")
    for line, g in zip(lines, got, strict=True):
        expected = spec_json(line)
        if expected == "not_json" and isinstance(g, str):
            assert g in ("not_json", "not_utf8", "blank")
        else:
            assert g == expected, line


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            json_events,
            st.sampled_from(
                [
                    b"",
                    b"  ",
                    b"{} {}",
                    b'{"account": "a", "ts": 1} {"ts": 2}',
                    b' {"account": "a", "ts": 1}',
                    b'{"account": "a",\n "ts": 1}',
                    b'{"account": "a", "ts": 1}\n',
                ]
            ),
            st.none(),
        ),
        max_size=12,
    ),
    st.booleans(),
)
def test_record_batch_equals_record_by_record(values, as_range):
    positions = list(range(100, 100 + len(values)))
    given_positions = range(100, 100 + len(values)) if as_range else positions
    whole = decode_records(RecordList("kafka:t:0", values, given_positions))
    one_by_one = [
        _decode_records_one_by_one(RecordList("kafka:t:0", [v], [p]))
        for v, p in zip(values, positions, strict=True)
    ]
    got = list(
        zip(
            whole.events.accounts.to_pylist(),
            whole.events.ts.tolist(),
            whole.events.positions.tolist(),
            strict=True,
        )
    )
    expected = [
        (a, t, p)
        for d in one_by_one
        for a, t, p in zip(
            d.events.accounts.to_pylist(),
            d.events.ts.tolist(),
            d.events.positions.tolist(),
            strict=True,
        )
    ]
    assert got == expected
    assert [(x.reason, x.position) for x in whole.dead] == [
        (x.reason, x.position) for d in one_by_one for x in d.dead
    ]


@given(
    st.lists(
        st.one_of(
            st.none(),
            st.binary(max_size=6),
            st.builds(lambda b: b"{" + b, st.binary(max_size=6)),
            st.sampled_from([b"{}", b"\n", b"{\n", b"{}\n", b"\n{", b"", b"{ }"]),
        ),
        max_size=8,
    )
)
def test_one_line_values_joins_exactly_the_lists_of_one_line_objects(values):
    one_line = all(v is not None and b"\n" not in v and v.startswith(b"{") for v in values)
    expected = b"\n".join(values) if values and one_line else None
    assert one_line_values(values) == expected


def test_positions_array_of_a_range_and_a_list():
    assert positions_array(range(5, 9)).tolist() == [5, 6, 7, 8]
    assert positions_array(range(3, 3)).tolist() == []
    assert positions_array([2, 7, 9]).tolist() == [2, 7, 9]
    assert positions_array(range(5, 9)).dtype == positions_array([1]).dtype == np.int64


def test_all_valid_records_take_the_batch_path():
    values = [json.dumps({"account": f"a{i}", "ts": i, "code": "E"}).encode() for i in range(50)]
    d = decode_records(RecordList("kafka:t:0", values, list(range(50))))
    assert d.events.accounts.to_pylist() == [f"a{i}".encode() for i in range(50)]
    assert d.events.ts.tolist() == list(range(50)) and not d.dead
