"""Point-in-time training sets from the history store, against a brute-force recomputation."""

import math

import orjson
import pyarrow as pa
import pytest
from bytewax.testing import run_main
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from streamml.dataflows.features import FeaturesConfig, SourceInput, build_flow
from streamml.state.definitions import load_definitions
from streamml.state.training_sets import build_training_set

from tests.dataflows.test_features import ACCOUNTS, DEFS
from tests.oracle import SUM_SCALE, FeaturesOracle


def point_in_time(f, kept, entity, t):
    """The definition, by brute force: accepted events of `entity` with ts <= t in the window."""
    lo = (t // f.bucket_ms - (f.window_buckets - 1)) * f.bucket_ms
    inside = [e for e in kept.get((entity, f.name), []) if lo <= e[0] <= t]
    if not inside or t - max(e[0] for e in inside) > f.ttl_ms:
        return None
    if f.aggregation == "count":
        return float(len(inside))
    xs = [e[2][f.field] for e in inside]
    if f.aggregation in ("sum", "mean"):
        total = sum(round(x * SUM_SCALE) for x in xs) / SUM_SCALE
        return total if f.aggregation == "sum" else total / len(xs)
    if f.aggregation == "min":
        return float(min(xs))
    if f.aggregation == "max":
        return float(max(xs))
    return float(max(inside, key=lambda e: (e[0], e[1]))[2][f.field])


event = st.fixed_dictionaries(
    {
        "acct": st.sampled_from(ACCOUNTS),
        "at": st.integers(0, 300),
        "ratio": st.sampled_from([0.5, 1.25, -2.0, 0.1, 0.2, 3]),
        "latency": st.sampled_from([1.0, 60.0, 2.5, 0.3, 45]),
        "band": st.sampled_from(["5GHz", "6GHz"]),
    }
)


@example(
    tests=[
        {"acct": "a", "at": t, "ratio": r, "latency": 45, "band": "5GHz"}
        for t, r in [(1, 0.5), (2, 1.25), (12, 3), (45, 0.1)]
    ],
    spine=[("a", 2), ("a", 13), ("a", 50), ("a", 200), ("b", 13)],
)
@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    tests=st.lists(event, min_size=1, max_size=60),
    spine=st.lists(st.tuples(st.sampled_from(ACCOUNTS), st.integers(0, 400)), max_size=30),
)
def test_training_set_matches_brute_force(tmp_path_factory, tests, spine):
    tmp = tmp_path_factory.mktemp("pit")
    defs_path = tmp / "features.toml"
    defs_path.write_text(DEFS.replace('ttl = "1s"', 'ttl = "40ms"'))
    defs = load_definitions(defs_path)
    (tmp / "tests.jsonl").write_bytes(b"".join(orjson.dumps(t) + b"\n" for t in tests))
    config = FeaturesConfig(
        inputs=(SourceInput("tests", "file", (str(tmp / "tests.jsonl"),)),),
        state_dir=tmp / "state",
        definitions_path=defs_path,
        shards=2,
        history_dir=tmp / "history",
        settle_ms=0,
    )
    run_main(build_flow(config))
    oracle = FeaturesOracle(defs.of_source("tests"))
    for t in tests:
        oracle.apply(t["acct"], t["at"], t)
    table = pa.table(
        {"account": [a for a, _ in spine], "ts": [t for _, t in spine], "label": range(len(spine))}
    )
    features = defs.of_source("tests")
    got = build_training_set(table, features, config.history_dir)
    assert got.column("label").to_pylist() == list(range(len(spine)))
    for f in features:
        column = got.column(f.name).to_pylist()
        for (entity, t), value in zip(spine, column, strict=True):
            want = point_in_time(f, oracle.kept, entity, t)
            if want is None or (isinstance(want, float) and math.isnan(want)):
                assert value is None, (f.name, entity, t, value)
            else:
                assert value == want, (f.name, entity, t, value, want)
    if len(spine) > 1 and spine[1] == ("a", 13):
        assert got.column("tests_n").to_pylist()[:2] == [2.0, 3.0]
    versions = orjson.loads(got.schema.metadata[b"feature_versions"])
    assert versions == {f.name: f.version for f in features}


def test_spine_needs_entity_and_time(tmp_path):
    with pytest.raises(ValueError, match="needs columns 'account'"):
        build_training_set(pa.table({"x": [1]}), [], tmp_path)


def test_dataset_build_cli(tmp_path, capsys):
    import pyarrow.parquet as pq

    from streamml.cli import main

    defs_path = tmp_path / "features.toml"
    defs_path.write_text(DEFS)
    rows = [{"acct": "a", "at": t, "ratio": 1, "latency": t, "band": "5GHz"} for t in range(9)]
    (tmp_path / "tests.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    config = FeaturesConfig(
        inputs=(SourceInput("tests", "file", (str(tmp_path / "tests.jsonl"),)),),
        state_dir=tmp_path / "state",
        definitions_path=defs_path,
        shards=2,
        history_dir=tmp_path / "history",
        settle_ms=0,
    )
    run_main(build_flow(config))
    spine = pa.table({"account": ["a", "a", "b"], "ts": [4, 8, 8], "label": [0, 1, 2]})
    pq.write_table(spine, tmp_path / "spine.parquet")
    argv = [
        "dataset",
        "build",
        "--spine",
        str(tmp_path / "spine.parquet"),
        "--history",
        str(tmp_path / "history"),
        "--state-dir",
        str(tmp_path / "state"),
        "--out",
        str(tmp_path / "out.parquet"),
    ]
    assert main([*argv, "--features", "tests_n,latency_max"]) == 0
    got = pq.read_table(tmp_path / "out.parquet")
    defs = load_definitions(defs_path)
    direct = build_training_set(
        spine, [defs.feature("tests_n"), defs.feature("latency_max")], tmp_path / "history"
    )
    assert (
        got.select(["tests_n", "latency_max"]).to_pylist()
        == direct.select(["tests_n", "latency_max"]).to_pylist()
    )
    assert got.column("tests_n").to_pylist()[2] is None
    assert main([*argv, "--features", "nope"]) == 2
    assert "unknown features ['nope']" in capsys.readouterr().err


def test_applied_reads_as_the_online_store_did(tmp_path):
    """With `applied`, each value is the online read as of T of a store that had applied each
    entity's events up to another time: behind T (a lag) or ahead of it, past the window too."""
    import random
    from dataclasses import replace

    from streamml.state.online import OnlineStore

    rng = random.Random(5)
    rows = sorted(
        (
            {
                "acct": rng.choice(ACCOUNTS[:3]),
                "at": rng.randrange(0, 300),
                "ratio": rng.choice([0.5, 1.25, -2.0, 0.1]),
                "latency": rng.choice([1.0, 60.0, 2.5]),
                "band": "5GHz",
            }
            for _ in range(150)
        ),
        key=lambda r: r["at"],
    )
    defs_path = tmp_path / "features.toml"
    defs_path.write_text(DEFS)
    features = load_definitions(defs_path).of_source("tests")
    no_ttl = [replace(f, ttl_ms=2**62) for f in features]

    def run(name, events):
        (tmp_path / f"{name}.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in events))
        config = FeaturesConfig(
            inputs=(SourceInput("tests", "file", (str(tmp_path / f"{name}.jsonl"),)),),
            state_dir=tmp_path / name,
            definitions_path=defs_path,
            shards=2,
            history_dir=tmp_path / f"{name}-history",
            settle_ms=0,
        )
        run_main(build_flow(config))
        return config

    full = run("full", rows)
    run("prefix", [r for r in rows if r["at"] <= 140])
    times = [5, 61, 119, 140, 141, 175, 260, 299]
    accounts = [a for a in ACCOUNTS for _ in times]
    store = OnlineStore(tmp_path / "prefix")
    reads = store.get_features(accounts, None, times * len(ACCOUNTS))
    store.close()
    # what the store had applied of each account: its events up to its latest, `updated_at`
    applied = [next(iter(r.values())).updated_at for r in reads]
    assert None in applied and len(set(applied)) > 2
    spine = pa.table({"account": accounts, "ts": times * len(ACCOUNTS), "applied": applied})
    got = build_training_set(spine, no_ttl, full.history_dir, applied="applied")
    checked = 0
    for f in features:
        for read, value in zip(reads, got.column(f.name).to_pylist(), strict=True):
            online = read[f.name].value
            if value is None and f.aggregation in ("count", "sum") and online is not None:
                value = 0.0
            if online is None or value is None:
                assert online is None and value is None, (f.name, online, value)
            else:
                same = math.isclose(online, value, rel_tol=1e-12, abs_tol=1e-9)
                assert same, (f.name, online, value)
                checked += 1
    assert checked > 50
