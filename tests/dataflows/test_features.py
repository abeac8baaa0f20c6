"""The features flow from a definition file, in process, against the brute-force oracle."""

import math
from pathlib import Path

import numpy as np
import orjson
import pytest
from bytewax.testing import run_main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from streamml.dataflows.features import FeaturesConfig, SourceInput, build_flow
from streamml.state.definitions import load_definitions
from streamml.state.errors import RefusedError
from streamml.state.history import read_history
from streamml.state.online import OnlineStore

from tests.oracle import FeaturesOracle

DEFS = """
[entities.account]

[sources.tests]
kind = "file"
entity = "account"
key = "acct"
time = "at"
fields = { ratio = "number", latency = "number", band = "string" }
filters = { band = ["5GHz", "6GHz"] }

[sources.errors]
kind = "file"
entity = "account"
key = "account"
time = "ts"

[features.tests_n]
source = "tests"
aggregation = "count"
bucket = "10ms"
window = "30ms"
ttl = "15ms"
alert = { above = 3 }

[features.ratio_mean]
source = "tests"
aggregation = "mean"
field = "ratio"
bucket = "20ms"
window = "60ms"
ttl = "1s"

[features.ratio_sum]
source = "tests"
aggregation = "sum"
field = "ratio"
bucket = "10ms"
window = "50ms"
ttl = "1s"

[features.latency_min]
source = "tests"
aggregation = "min"
field = "latency"
bucket = "10ms"
window = "30ms"
ttl = "1s"

[features.latency_max]
source = "tests"
aggregation = "max"
field = "latency"
bucket = "20ms"
window = "40ms"
ttl = "1s"
alert = { above = 50 }

[features.latency_last]
source = "tests"
aggregation = "last"
field = "latency"
bucket = "10ms"
window = "20ms"
ttl = "1s"

[features.errors_n]
source = "errors"
aggregation = "count"
bucket = "10ms"
window = "40ms"
ttl = "1s"
alert = { above = 2 }
"""

ACCOUNTS = ["a", "b", "c", "ü"]


def _write(path: Path, rows) -> None:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))


def run(tmp: Path, defs_path: Path, inputs: dict[str, list[Path]], *, name="state", **kw):
    config = FeaturesConfig(
        inputs=tuple(SourceInput(n, "file", tuple(str(p) for p in ps)) for n, ps in inputs.items()),
        state_dir=tmp / name,
        definitions_path=defs_path,
        shards=3,
        alerts_out=tmp / f"{name}-alerts.jsonl",
        dead_letters_out=tmp / f"{name}-dead.jsonl",
        history_dir=tmp / f"{name}-history",
        stats_path=tmp / f"{name}-stats.json",
        settle_ms=0,
        **kw,
    )
    run_main(build_flow(config))
    alerts = [orjson.loads(x) for x in (tmp / f"{name}-alerts.jsonl").read_bytes().splitlines()]
    dead = [orjson.loads(x) for x in (tmp / f"{name}-dead.jsonl").read_bytes().splitlines()]
    stats = orjson.loads((tmp / f"{name}-stats.json").read_bytes())["counters"]
    return config, alerts, dead, stats


test_event = st.fixed_dictionaries(
    {
        "acct": st.sampled_from(ACCOUNTS),
        "at": st.integers(0, 300),
        "ratio": st.sampled_from([0.5, 1.25, -2.0, 0.1, 0.2, 3]),
        "latency": st.sampled_from([1.0, 60.0, 2.5, 0.3, 45]),
        "band": st.sampled_from(["5GHz", "6GHz", "2.4GHz"]),
    }
)
broken = st.sampled_from(
    [
        {"acct": "a", "at": 5, "latency": 1, "band": "5GHz"},
        {"acct": "a", "at": 5, "ratio": "x", "latency": 1, "band": "5GHz"},
        "not json",
    ]
)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    tests=st.lists(test_event | broken, min_size=1, max_size=80),
    errors=st.lists(st.tuples(st.sampled_from(ACCOUNTS), st.integers(0, 300)), max_size=60),
    reads=st.lists(st.integers(0, 400), min_size=1, max_size=3),
)
def test_flow_matches_oracle(tmp_path_factory, tests, errors, reads):
    tmp = tmp_path_factory.mktemp("features")
    defs_path = tmp / "features.toml"
    defs_path.write_text(DEFS)
    defs = load_definitions(defs_path)
    lines = [orjson.dumps(t) if not isinstance(t, str) else t.encode() for t in tests]
    (tmp / "tests.jsonl").write_bytes(b"".join(x + b"\n" for x in lines))
    _write(tmp / "errors.jsonl", [{"account": a, "ts": t} for a, t in errors])
    inputs = {"tests": [tmp / "tests.jsonl"], "errors": [tmp / "errors.jsonl"]}
    config, alerts, dead, stats = run(tmp, defs_path, inputs)

    oracles = {s: FeaturesOracle(defs.of_source(s)) for s in ("tests", "errors")}
    expected_alerts, history = [], {f: [] for f in defs.features}
    valid = [t for t in tests if isinstance(t, dict) and "ratio" in t and t["ratio"] != "x"]
    kept = [t for t in valid if t["band"] in ("5GHz", "6GHz")]
    for t in kept:
        out = oracles["tests"].apply(t["acct"], t["at"], t)
        for name, (acc, value, fired) in out.items():
            if acc:
                field = defs.feature(name).field
                contribution = 1.0 if field is None else float(t[field])
                history[name].append((t["acct"], t["at"], value, contribution))
            if fired:
                expected_alerts.append((name, t["acct"], t["at"], value))
    for a, t in errors:
        for name, (acc, value, fired) in oracles["errors"].apply(a, t, {}).items():
            if acc:
                history[name].append((a, t, value, 1.0))
            if fired:
                expected_alerts.append((name, a, t, value))

    got_alerts = [(x["feature"], x["account"], x["ts"], x["value"]) for x in alerts]
    assert sorted(got_alerts) == sorted(expected_alerts)
    assert len(dead) == len(tests) - len(valid)
    assert stats.get("filtered", 0) == len(valid) - len(kept)
    for name, rows in history.items():
        table = read_history(config.history_dir, name)
        got = sorted(
            zip(
                table.column("account").to_pylist(),
                [int(x.timestamp() * 1000) for x in table.column("event_time").to_pylist()],
                table.column("value").to_pylist(),
                table.column("contribution").to_pylist(),
                strict=True,
            )
        )
        assert got == sorted(rows), name
        if len(table):
            assert set(table.column("feature_version").to_pylist()) == {defs.feature(name).version}
    store = OnlineStore(config.state_dir)
    for as_of in reads:
        got = store.get_features(ACCOUNTS, as_of=as_of)
        for account, features in zip(ACCOUNTS, got, strict=True):
            for oracle in oracles.values():
                seen = any(e == account for (e, _f) in oracle.kept)
                expected = oracle.read(account, as_of)
                for name, value in expected.items():
                    read = features[name]
                    if not seen:
                        assert read.status == "missing" and read.value is None
                        continue
                    if isinstance(value, float) and math.isnan(value):
                        assert read.value is None, (account, name)
                    else:
                        assert read.value == value, (account, name, as_of, read, value)
                    f = defs.feature(name)
                    assert read.version == f.version
                    if read.value is not None:
                        fresh = as_of - read.updated_at <= f.ttl_ms
                        assert read.status == ("fresh" if fresh else "stale")
    store.close()


def test_definition_changes_that_reinterpret_state_are_refused(tmp_path):
    defs_path = tmp_path / "features.toml"
    defs_path.write_text(DEFS)
    _write(tmp_path / "errors.jsonl", [{"account": "a", "ts": 5}])
    inputs = {"errors": [tmp_path / "errors.jsonl"]}
    run(tmp_path, defs_path, inputs)
    defs_path.write_text(DEFS.replace('window = "40ms"', 'window = "80ms"'))
    with pytest.raises(
        RefusedError, match=r"errors_n: version \w+ -> \w+ \(window_ms 40 -> 80\).*backfill"
    ):
        run(tmp_path, defs_path, inputs, name="state")
    defs_path.write_text(DEFS.replace('ttl = "1s"\nalert = { above = 2 }', 'ttl = "2s"'))
    run(tmp_path, defs_path, inputs, name="state")
    store = OnlineStore(tmp_path / "state")
    assert store.definitions()["errors_n"].ttl_ms == 2000
    assert store.get_features(["a"], ["errors_n"], as_of=5)[0]["errors_n"].value == 1


def test_sources_share_shards_and_values_survive_rerun(tmp_path):
    defs_path = tmp_path / "features.toml"
    defs_path.write_text(DEFS)
    rows = [{"acct": "a", "at": t, "ratio": 1, "latency": 2, "band": "5GHz"} for t in range(5)]
    _write(tmp_path / "tests.jsonl", rows)
    _write(tmp_path / "errors.jsonl", [{"account": "a", "ts": t} for t in range(3)])
    inputs = {"tests": [tmp_path / "tests.jsonl"], "errors": [tmp_path / "errors.jsonl"]}
    run(tmp_path, defs_path, inputs)
    _, _, _, stats = run(tmp_path, defs_path, inputs)
    assert stats.get("read", 0) == 0 and stats.get("accepted", 0) == 0
    store = OnlineStore(tmp_path / "state")
    got = store.get_features(["a"], ["tests_n", "errors_n", "ratio_sum"], as_of=9)[0]
    assert (got["tests_n"].value, got["errors_n"].value, got["ratio_sum"].value) == (5, 3, 5.0)
    assert np.isclose(got["ratio_sum"].value, 5.0)
