"""The whole error-count flow, in process, against the brute-force oracle."""

from pathlib import Path

import orjson
import pytest
from bytewax.testing import run_main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from streamml.dataflows.error_count import ErrorCountConfig, SourceConfig, build_flow
from streamml.state.history import read_history
from streamml.state.layout import StateLayout
from streamml.state.online import OnlineStore

from tests.oracle import RollingOracle

ACCOUNTS = ["a", "b", "c", "d", "e"]


def write_jsonl(path: Path, events) -> None:
    path.write_bytes(b"".join(orjson.dumps({"account": a, "ts": t}) + b"\n" for a, t in events))


def run(
    tmp: Path,
    inputs,
    *,
    window=4,
    threshold=3,
    shards=3,
    name="state",
    chunk_bytes=None,
    codec="sparse",
):
    config = ErrorCountConfig(
        source=SourceConfig(
            kind="file", paths=tuple(str(p) for p in inputs), chunk_bytes=chunk_bytes
        ),
        state_dir=tmp / name,
        layout=StateLayout(shards=shards, bucket_ms=10, window_buckets=window),
        threshold=threshold,
        alerts_out=tmp / f"{name}-alerts.jsonl",
        late_out=tmp / f"{name}-late.jsonl",
        history_dir=tmp / f"{name}-history",
        stats_path=tmp / f"{name}-stats.json",
        state_codec=codec,
    )
    run_main(build_flow(config))
    alerts = [orjson.loads(x) for x in (tmp / f"{name}-alerts.jsonl").read_bytes().splitlines()]
    stats = orjson.loads((tmp / f"{name}-stats.json").read_bytes())["counters"]
    return config, alerts, stats


events_strategy = st.lists(
    st.tuples(st.sampled_from(ACCOUNTS), st.integers(0, 400)), min_size=1, max_size=120
).map(lambda evs: [(a, max(0, t + i)) for i, (a, t) in enumerate(evs)])


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(events=events_strategy, window=st.integers(1, 5), threshold=st.integers(0, 5))
def test_flow_matches_oracle(tmp_path_factory, events, window, threshold):
    tmp = tmp_path_factory.mktemp("flow")
    path = tmp / "events.jsonl"
    write_jsonl(path, events)
    config, alerts, stats = run(tmp, [path], window=window, threshold=threshold)

    oracle = RollingOracle(window=window, bucket_ms=10, threshold=threshold)
    expected_alerts, accepted, late, history = [], 0, 0, []
    for a, t in events:
        kind, value, fired = oracle.apply(a, t)
        if kind == "late":
            late += 1
            continue
        accepted += 1
        history.append((a, t, value))
        if fired:
            expected_alerts.append((a, t, value))
    assert sorted((x["account"], x["ts"], x["value"]) for x in alerts) == sorted(expected_alerts)
    assert (stats["accepted"], stats["late"], stats["read"]) == (accepted, late, len(events))

    store = OnlineStore(config.state_dir)
    for a in ACCOUNTS:
        got = store.get(a, as_of=oracle.max_bucket.get(a, 0) * 10)
        assert got.value == oracle.value_as_of(a, oracle.max_bucket.get(a, 0) * 10)
        assert got.updated_at == oracle.updated_at.get(a)
        later = (oracle.max_bucket.get(a, 0) + window // 2 + 1) * 10
        assert store.get(a, as_of=later).value == oracle.value_as_of(a, later)
    store.close()

    table = read_history(config.history_dir)
    rows = sorted(
        zip(
            table.column("account").to_pylist(),
            [int(x.timestamp() * 1000 + 0.5) for x in table.column("event_time").to_pylist()],
            table.column("value").to_pylist(),
            strict=True,
        )
    )
    assert rows == sorted(history)


def test_continuation_equals_one_run(tmp_path):
    import random

    rng = random.Random(5)
    events = [(rng.choice(ACCOUNTS), rng.randint(0, 300) + i) for i in range(400)]
    one = tmp_path / "all.jsonl"
    write_jsonl(one, events)
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    write_jsonl(first, events[:200])
    write_jsonl(second, events[200:])

    c1, alerts1, _ = run(tmp_path, [one], name="one")
    c2, alerts_a, _ = run(tmp_path, [first], name="two")
    c2, alerts_b, stats_b = run(tmp_path, [second], name="two")
    assert stats_b["read"] == 200
    key = lambda x: (x["account"], x["ts"], x["value"])  # noqa: E731
    assert sorted(map(key, alerts1)) == sorted(map(key, alerts_b))  # the file accumulates
    assert len(alerts_a) <= len(alerts_b)
    s1, s2 = OnlineStore(c1.state_dir), OnlineStore(c2.state_dir)
    for a in ACCOUNTS:
        for as_of in (1000, 2000, 5000):
            assert s1.get(a, as_of) == s2.get(a, as_of)


def test_rerun_and_append_count_each_record_once(tmp_path):
    events = [("a", 10 * i) for i in range(30)]
    path = tmp_path / "grow.jsonl"
    write_jsonl(path, events[:20])
    config, _, s1 = run(tmp_path, [path], window=100, threshold=1000)
    _, _, s2 = run(tmp_path, [path], window=100, threshold=1000)
    assert s1["accepted"] == 20
    assert s2.get("read", 0) == s2.get("accepted", 0) == s2.get("skipped", 0) == 0
    with path.open("ab") as f:
        f.write(b"".join(orjson.dumps({"account": a, "ts": t}) + b"\n" for a, t in events[20:]))
    _, _, s3 = run(tmp_path, [path], window=100, threshold=1000)
    assert s3["accepted"] == 10 and s3["read"] == 10 and s3.get("skipped", 0) == 0
    assert OnlineStore(config.state_dir).get("a", as_of=290).value == 30


def test_small_chunks_count_like_one_chunk(tmp_path):
    import random

    rng = random.Random(8)
    events = [(rng.choice(ACCOUNTS), rng.randint(0, 300) + i) for i in range(300)]
    path = tmp_path / "events.jsonl"
    write_jsonl(path, events)
    one, alerts_one, stats_one = run(tmp_path, [path], name="one")
    small, alerts_small, stats_small = run(tmp_path, [path], name="small", chunk_bytes=64)
    assert ErrorCountConfig.from_env(small.to_env()) == small
    key = lambda x: x["id"]  # noqa: E731
    assert sorted(alerts_small, key=key) == sorted(alerts_one, key=key)
    assert stats_small["read"] == stats_one["read"] == len(events)
    s1, s2 = OnlineStore(one.state_dir), OnlineStore(small.state_dir)
    for a in ACCOUNTS:
        assert s1.get(a, 1000) == s2.get(a, 1000)


def _shard_codecs(config: ErrorCountConfig) -> set[str | None]:
    from streamml.state.rolling_store import RollingStateStore

    out = set()
    for shard in range(config.layout.shards):
        path = StateLayout.shard_dir(config.state_dir, shard)
        store = RollingStateStore(path, feature=1, window=4, read_only=True)
        out.add(store.codec)
        store.close()
    return out


@pytest.mark.parametrize("later", ["sparse", "raw"])
def test_a_raw_state_dir_reads_and_continues_as_one_run(tmp_path, later):
    """A state dir written before the sparse codec (raw values) is read and continued exactly.

    The first half is written raw (as every state dir before the codec); the second half runs
    with today's default (sparse for new databases), which keeps each database's format.
    """
    import random

    rng = random.Random(11)
    events = [(rng.choice(ACCOUNTS), rng.randint(0, 300) + i) for i in range(400)]
    one, first, second = (tmp_path / f"{n}.jsonl" for n in ("all", "first", "second"))
    write_jsonl(one, events)
    write_jsonl(first, events[:200])
    write_jsonl(second, events[200:])
    c1, alerts1, _ = run(tmp_path, [one], name="one")
    c2, _, _ = run(tmp_path, [first], name="two", codec="raw")
    assert _shard_codecs(c2) == {"raw"}
    middle = OnlineStore(c2.state_dir)
    oracle = RollingOracle(window=4, bucket_ms=10, threshold=3)
    for a, t in events[:200]:
        oracle.apply(a, t)
    for a in ACCOUNTS:
        at = oracle.max_bucket.get(a, 0) * 10
        assert middle.get(a, as_of=at).value == oracle.value_as_of(a, at)
    middle.close()
    c2, alerts_b, stats_b = run(tmp_path, [second], name="two", codec=later)
    assert stats_b["read"] == 200
    assert _shard_codecs(c2) == {"raw"}
    assert _shard_codecs(c1) == {"sparse"}
    key = lambda x: (x["account"], x["ts"], x["value"])  # noqa: E731
    assert sorted(map(key, alerts1)) == sorted(map(key, alerts_b))
    s1, s2 = OnlineStore(c1.state_dir), OnlineStore(c2.state_dir)
    for a in ACCOUNTS:
        for as_of in (1000, 2000, 5000):
            assert s1.get(a, as_of) == s2.get(a, as_of)
        assert s1.get_features([a], as_of=5000) == s2.get_features([a], as_of=5000)
    s1.close()
    s2.close()
