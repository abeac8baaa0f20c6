from __future__ import annotations

import math
import pickle
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.onnx_models import (
    SOURCE_KINDS,
    ContractError,
    FeatureContract,
    FeatureSource,
    FeatureSpec,
    MissingPolicy,
    bundled_contract,
    bundled_contract_path,
    triage_contract,
)


def st_json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=2**64, max_value=2**2000),
        st.floats(),
        st.text(max_size=5),
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
        max_leaves=6,
    )


def test_json_round_trip() -> None:
    c = triage_contract()
    assert FeatureContract.from_json(c.to_json()) == c
    assert c.feature_names[0] == "signal_errors_24h"


def test_reject_shorthand_and_default_policy() -> None:
    c = FeatureContract.from_json(
        {
            "features": [
                {"name": "a", "ttl_ms": 10, "on_missing": "reject"},
                {"name": "b", "ttl_ms": 20, "on_missing": {"policy": "default", "value": 1.5}},
            ]
        }
    )
    assert c.features[0].on_missing == MissingPolicy.reject()
    assert c.features[1].on_missing == MissingPolicy.default(1.5)
    assert c.allow_nan is False


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ([], "expected a JSON object"),
        ({"features": []}, "at least one feature"),
        ({"features": [{"name": "a", "ttl_ms": 0, "on_missing": "reject"}]}, "positive integer"),
        ({"features": [{"name": "a", "ttl_ms": 5}]}, "on_missing is required"),
        ({"features": [{"name": "a", "ttl_ms": 5, "on_missing": "zero"}]}, 'expected "reject"'),
        (
            {"features": [{"name": "a", "ttl_ms": 5, "on_missing": {"policy": "default"}}]},
            'expected "reject"',
        ),
        (
            {
                "features": [
                    {"name": "a", "ttl_ms": 5, "on_missing": "reject"},
                    {"name": "a", "ttl_ms": 5, "on_missing": "reject"},
                ]
            },
            "unique",
        ),
        ({"features": [{"name": "a", "ttl_ms": 5, "on_missing": "reject", "x": 1}]}, "unknown"),
        (
            {"features": [{"name": "a", "ttl_ms": 5, "on_missing": "reject"}], "allow_nan": 1},
            "true",
        ),
    ],
)
def test_malformed_contracts_are_refused(raw: Any, match: str) -> None:
    with pytest.raises(ContractError, match=match):
        FeatureContract.from_json(raw)


# Feature sources.

LEGACY = {
    "features": [
        {"name": "signal_errors_24h", "ttl_ms": 300000, "on_missing": "reject"},
        {"name": "node_health", "ttl_ms": 60000, "on_missing": {"policy": "default", "value": 1}},
    ],
    "allow_nan": False,
}


def test_a_contract_without_sources_reads_every_feature_online_under_its_name() -> None:
    c = FeatureContract.from_json(LEGACY)
    assert [f.source for f in c.features] == [
        FeatureSource("online", feature="signal_errors_24h"),
        FeatureSource("online", feature="node_health"),
    ]
    assert c.by_source("online") == c.features
    assert c.by_source("request") == () and c.services == ()
    # The spec fills the default: an online source without a name, or no source at all.
    a = FeatureSpec("x", 10, MissingPolicy.reject())
    b = FeatureSpec("x", 10, MissingPolicy.reject(), source=FeatureSource.online())
    assert a == b and a.source.feature == "x"
    assert FeatureContract.from_json(c.to_json()) == c


def test_sources_parse_and_group_by_kind() -> None:
    c = FeatureContract.from_json(
        {
            "features": [
                {"name": "a", "ttl_ms": 1, "on_missing": "reject", "source": {"kind": "online"}},
                {
                    "name": "b",
                    "ttl_ms": 1,
                    "on_missing": "reject",
                    "source": {"kind": "request", "expression": "speed.down"},
                },
                {
                    "name": "c",
                    "ttl_ms": 1,
                    "on_missing": "reject",
                    "source": {"kind": "on_demand", "service": "tv", "expression": "x"},
                },
                {
                    "name": "d",
                    "ttl_ms": 1,
                    "on_missing": "reject",
                    "source": {"kind": "online", "feature": "other_name"},
                },
                {
                    "name": "e",
                    "ttl_ms": 1,
                    "on_missing": "reject",
                    "source": {"kind": "on_demand", "service": "radio", "expression": "y[0]"},
                },
                {
                    "name": "f",
                    "ttl_ms": 1,
                    "on_missing": "reject",
                    "source": {"kind": "on_demand", "service": "tv", "expression": "z"},
                },
            ]
        }
    )
    names = lambda specs: [s.name for s in specs]  # noqa: E731
    assert names(c.by_source("online")) == ["a", "d"]
    assert names(c.by_source("request")) == ["b"]
    assert names(c.by_source("on_demand")) == ["c", "e", "f"]
    assert c.services == ("tv", "radio")
    assert names(c.for_service("tv")) == ["c", "f"]
    assert c.features[0].source == FeatureSource.online("a")
    assert c.features[3].source == FeatureSource.online("other_name")
    assert c.features[1].source.extract({"speed": {"down": 3}}) == 3.0
    with pytest.raises(ValueError, match="kind must be one of"):
        c.by_source("cache")  # type: ignore[arg-type]


AT = r"features\[1\] \(latency_ms\) source: "


def _with_source(source: Any) -> dict[str, Any]:
    return {
        "features": [
            {"name": "ok", "ttl_ms": 5, "on_missing": "reject"},
            {"name": "latency_ms", "ttl_ms": 5, "on_missing": "reject", "source": source},
        ]
    }


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ("online", r"features\[1\] \(latency_ms\) source: expected an object"),
        ({}, r"features\[1\] \(latency_ms\) source\.kind: expected one of"),
        ({"kind": "cache"}, r"latency_ms\) source\.kind: .*got 'cache'"),
        (
            {"kind": "online", "expression": "a"},
            AT + r"unknown keys \['expression'\]",
        ),
        ({"kind": "request", "expression": "a", "service": "s"}, r"unknown keys \['service'\]"),
        (
            {"kind": "request", "expresion": "a"},
            AT + r"unknown keys \['expresion'\]",
        ),
        ({"kind": "online", "feature": ""}, AT + r"feature must be a non-empty"),
        ({"kind": "online", "feature": 3}, AT + r"feature must be a non-empty"),
        ({"kind": "request"}, AT + r"expression must be a non-empty"),
        ({"kind": "request", "expression": ""}, AT + r"expression must be"),
        ({"kind": "request", "expression": "  "}, AT + r"expression must be"),
        ({"kind": "request", "expression": 5}, AT + r"expression must be"),
        (
            {"kind": "request", "expression": "min("},
            AT + r"expression 'min\(' is not",
        ),
        (
            {"kind": "request", "expression": "a[?"},
            AT + r".* is not valid JMESPath",
        ),
        ({"kind": "request", "expression": "`x"}, r"is not valid JMESPath"),
        ({"kind": "request", "expression": "mean(a)"}, r"unknown JMESPath function mean\(\)"),
        ({"kind": "request", "expression": "abs(a, b)"}, r"abs\(\) takes 1 arguments, got 2"),
        ({"kind": "request", "expression": "merge()"}, r"merge\(\) takes at least 1 arguments"),
        ({"kind": "on_demand", "expression": "a"}, AT + r"service must be a non"),
        ({"kind": "on_demand", "service": "", "expression": "a"}, r"service must be a non-empty"),
        ({"kind": "on_demand", "service": "a b", "expression": "a"}, r"service must be"),
        ({"kind": "on_demand", "service": "telemetry"}, r"expression must be a non-empty"),
        (
            {"kind": "on_demand", "service": "telemetry", "expression": "a.["},
            AT + r"expression 'a\.\[' is not valid JMESPath",
        ),
    ],
)
def test_malformed_sources_are_refused_naming_feature_and_field(source: Any, match: str) -> None:
    with pytest.raises(ContractError, match=match):
        FeatureContract.from_json(_with_source(source))


def test_sources_built_in_code_are_validated_too() -> None:
    with pytest.raises(ContractError, match="not valid JMESPath"):
        FeatureSource.request("devices[")
    with pytest.raises(ContractError, match="service must be"):
        FeatureSource.on_demand("", "a")
    with pytest.raises(ContractError, match="takes no feature name"):
        FeatureSource("request", expression="a", feature="b")
    with pytest.raises(ContractError, match="only a feature name"):
        FeatureSource("online", expression="a")
    with pytest.raises(ContractError, match="kind must be one of"):
        FeatureSource("sql")  # type: ignore[arg-type]


DOC = {
    "devices": [
        {"rssi_dbm": -70.5, "noise_dbm": -90, "band": "5GHz"},
        {"rssi_dbm": -40, "noise_dbm": -95.25, "band": "2.4GHz"},
    ],
    "modem": {"uptime_h": 12, "ok": True, "name": "m1", "none": None, "big": 10**400},
    "flags": [True],
}


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("min(devices[].rssi_dbm)", -70.5),
        ("max(devices[].rssi_dbm)", -40.0),
        ("min_by(devices, &rssi_dbm).noise_dbm", -90.0),
        ("max_by(devices, &rssi_dbm).noise_dbm", -95.25),
        ("length(devices)", 2.0),
        ("modem.uptime_h", 12.0),
        ("modem.ok", None),  # a bool is not a number
        ("modem.name", None),
        ("modem.none", None),
        ("modem.missing", None),
        ("nothing.at.all", None),
        ("devices", None),  # a list
        ("modem", None),  # an object
        ("modem.big", None),  # too large for a float
        ("min(devices[].band)", None),  # a string minimum
        ("min(flags)", None),  # jmespath refuses booleans at search time
        ("abs(modem.name)", None),  # wrong type at search time
        ("devices[5].rssi_dbm", None),
        ("sum(devices[].rssi_dbm)", -110.5),
    ],
)
def test_extract_returns_finite_floats_or_none(expression: str, expected: float | None) -> None:
    got = FeatureSource.on_demand("svc", expression).extract(DOC)
    assert got == expected
    assert got is None or type(got) is float


def test_extract_refuses_non_finite_and_odd_documents() -> None:
    src = FeatureSource.request("v")
    assert src.extract({"v": float("nan")}) is None
    assert src.extract({"v": float("inf")}) is None
    assert src.extract({"v": -float("inf")}) is None
    assert src.extract({"v": 7}) == 7.0
    assert src.extract(None) is None
    assert src.extract([1, 2]) is None
    assert src.extract("v") is None
    with pytest.raises(TypeError, match="online store"):
        FeatureSource.online("x").extract({"x": 1})


@given(value=st_json_values())
@settings(max_examples=300, deadline=None)
def test_extract_of_a_field_keeps_exactly_the_finite_numbers(value: Any) -> None:
    got = FeatureSource.request("field").extract({"field": value, "other": 1})
    expected = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            expected = float(value)
        except OverflowError:
            expected = None
    if expected is not None and not math.isfinite(expected):
        expected = None
    assert got == expected


def test_a_source_survives_pickling() -> None:
    src = FeatureSource.on_demand("telemetry", "min_by(devices, &rssi_dbm).noise_dbm")
    back = pickle.loads(pickle.dumps(src))
    assert back == src and back.extract(DOC) == -90.0


_IDENT = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)
_EXPRESSIONS = st.one_of(
    _IDENT,
    st.builds(lambda a, b: f"{a}.{b}", _IDENT, _IDENT),
    st.builds(lambda a, b: f"min({a}[].{b})", _IDENT, _IDENT),
    st.builds(lambda a, b: f"min_by({a}, &{b}).{b}", _IDENT, _IDENT),
    st.builds(lambda a, i: f"{a}[{i}]", _IDENT, st.integers(-5, 5)),
    st.builds(lambda a: f"length({a})", _IDENT),
)
_SOURCES = st.one_of(
    st.just(FeatureSource.online()),
    st.builds(FeatureSource.online, st.one_of(st.none(), st.text(min_size=1, max_size=20))),
    st.builds(FeatureSource.request, _EXPRESSIONS),
    st.builds(
        FeatureSource.on_demand,
        st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True),
        _EXPRESSIONS,
    ),
)
_POLICIES = st.one_of(
    st.just(MissingPolicy.reject()),
    st.builds(MissingPolicy.default, st.floats(allow_nan=False, allow_infinity=False)),
)
_SPECS = st.builds(
    FeatureSpec,
    name=st.text(min_size=1, max_size=20),
    ttl_ms=st.integers(1, 10**12),
    on_missing=_POLICIES,
    source=_SOURCES,
)


@given(
    specs=st.lists(_SPECS, min_size=1, max_size=8, unique_by=lambda s: s.name),
    allow_nan=st.booleans(),
)
@settings(max_examples=200, deadline=None)
def test_any_contract_round_trips_through_json(specs: list[FeatureSpec], allow_nan: bool) -> None:
    c = FeatureContract(tuple(specs), allow_nan=allow_nan)
    assert FeatureContract.from_json(orjson.loads(orjson.dumps(c.to_json()))) == c
    for spec in c.features:
        if spec.source.kind == "online":
            assert spec.source.feature is not None
    assert sum(len(c.by_source(k)) for k in SOURCE_KINDS) == len(c)


def test_the_triage_contract_takes_each_feature_from_its_source() -> None:
    c = triage_contract()
    assert [f.name for f in c.by_source("online")] == ["signal_errors_24h"]
    assert [f.name for f in c.by_source("request")] == [
        "download_ratio",
        "upload_ratio",
        "latency_ms",
        "packet_loss_pct",
    ]
    assert c.services == ("telemetry",)
    assert [f.name for f in c.for_service("telemetry")] == [
        "wifi_rssi_dbm",
        "wifi_noise_dbm",
        "connected_devices",
        "modem_uptime_h",
        "node_health",
    ]
    context = {"download_ratio": 0.4, "upload_ratio": 0.5, "latency_ms": 80, "packet_loss_pct": 2}
    assert [f.source.extract(context) for f in c.by_source("request")] == [0.4, 0.5, 80.0, 2.0]
    doc = {
        "devices": [
            {"rssi_dbm": -50.0, "noise_dbm": -90.0},
            {"rssi_dbm": -71.5, "noise_dbm": -88.5},
            {"rssi_dbm": -60.0, "noise_dbm": -80.0},
        ],
        "modem": {"uptime_h": 800},
        "node": {"health": 0.25},
    }
    assert [f.source.extract(doc) for f in c.for_service("telemetry")] == [
        -71.5,
        -88.5,
        3.0,
        800.0,
        0.25,
    ]
    ttl = {f.name: f.ttl_ms for f in c.features}
    assert ttl["signal_errors_24h"] == 5 * 60_000
    assert ttl["wifi_rssi_dbm"] == 15 * 60_000
    assert ttl["latency_ms"] >= 3_600_000


def test_the_bundled_contract_file_is_the_triage_contract() -> None:
    raw = bundled_contract_path().read_bytes()
    assert bundled_contract() == triage_contract()
    assert raw == orjson.dumps(triage_contract().to_json(), option=orjson.OPT_INDENT_2) + b"\n"
