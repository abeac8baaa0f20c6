"""The online store read by another process while a writer updates it, and history round trips."""

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from streamml.state.history import HistoryWriter, read_history
from streamml.state.layout import StateLayout
from streamml.state.online import FeatureRead, FeatureValue, OnlineStore, window_value
from streamml.state.rolling_store import RollingStateStore, empty_records
from streamml.state.sharding import shard_of

ROOT = Path(__file__).resolve().parents[2]


def test_window_value_matches_definition():
    counts = np.array([3, 0, 2, 5])
    m = 100
    for as_of in range(90, 110):
        expected = sum(int(counts[k]) for k in range(4) if as_of - 3 <= m - k <= as_of)
        assert window_value(counts, m, as_of, 4) == expected
    assert window_value(counts, -1, 100, 4) == 0


def test_reader_process_sees_writes_while_writer_runs(tmp_path):
    layout = StateLayout(shards=1, bucket_ms=1, window_buckets=4)
    layout.ensure(tmp_path)
    writer = textwrap.dedent(
        f"""
        import sys, time, numpy as np
        from streamml.state.layout import StateLayout
        from streamml.state.rolling_store import RollingStateStore, empty_records
        store = RollingStateStore(StateLayout.shard_dir({str(tmp_path)!r}, 0), feature=1, window=4)
        for i in range(1, 201):
            rec = empty_records(1, 4)
            rec["max_bucket"] = 10
            rec["updated_at"] = i
            rec["counts"][0] = [i, 0, 0, 0]
            store.commit([b"acct"], rec, {{"p": i}})
            print(i, flush=True)
            time.sleep(0.01)
        time.sleep(2)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "1"
        seen = []
        deadline = time.time() + 30
        while time.time() < deadline:
            store = OnlineStore(tmp_path)
            v = store.get("acct", as_of=10)
            store.close()
            assert v.value == v.updated_at  # each read is one consistent record
            seen.append(v.value)
            if v.value == 200:
                break
            time.sleep(0.02)
        assert seen[-1] == 200 and seen == sorted(seen)
        assert len(set(seen)) > 1
    finally:
        proc.kill()
        proc.wait()


def test_a_following_reader_catches_up_with_the_writer_on_refresh(tmp_path):
    layout = StateLayout(shards=2, bucket_ms=1, window_buckets=2)
    layout.ensure(tmp_path)
    account = b"acct-7"
    shard = shard_of(account, 2)
    writer = RollingStateStore(StateLayout.shard_dir(tmp_path, shard), feature=1, window=2)
    reader = OnlineStore(tmp_path, follow=True)
    assert reader.get_batch([account], [3]) == [FeatureValue(0, None)]
    for i in range(1, 4):
        rec = empty_records(1, 2)
        rec["max_bucket"] = 3
        rec["updated_at"] = i
        rec["counts"][0] = [i, 10]
        writer.commit([account], rec, {"p": i})
        assert reader.get(account, as_of=3).updated_at == (i - 1 or None)
        reader.refresh()
        assert reader.get_batch([account, b"nobody"], [3, 3]) == [
            FeatureValue(i + 10, i),
            FeatureValue(0, None),
        ]
    secondary = reader._secondary_root
    assert secondary is not None and secondary.is_dir()
    reader.close()
    writer.close()
    assert not secondary.exists()


def test_store_round_trip_and_positions(tmp_path):
    store = RollingStateStore(tmp_path / "s", feature=1, window=3)
    rec = empty_records(2, 3)
    rec["max_bucket"] = [5, 7]
    rec["counts"] = [[1, 2, 3], [4, 5, 6]]
    store.commit([b"x", b"y"], rec, {"file:a": 10, "kafka:t:1": 99})
    loaded = store.load([b"y", b"nobody", b"x"])
    assert loaded["max_bucket"].tolist() == [7, -1, 5]
    assert loaded["counts"][0].tolist() == [4, 5, 6]
    assert store.applied_positions() == {"file:a": 10, "kafka:t:1": 99}
    assert store.applied_position("other") == -1
    assert [a for a, _ in store.iter_records()] == [b"x", b"y"]


def test_online_store_routes_to_the_owning_shard(tmp_path):
    layout = StateLayout(shards=4, bucket_ms=1, window_buckets=2)
    layout.ensure(tmp_path)
    for account in (b"a", b"b", b"c", b"d", b"e"):
        shard = shard_of(account, 4)
        store = RollingStateStore(StateLayout.shard_dir(tmp_path, shard), feature=1, window=2)
        rec = empty_records(1, 2)
        rec["max_bucket"] = 3
        rec["updated_at"] = 3
        rec["counts"][0] = [len(account) + ord(account) % 5, 1]
        store.commit([account], rec, {})
        store.close()
    online = OnlineStore(tmp_path)
    for account in ("a", "b", "c", "d", "e"):
        assert online.get(account, as_of=3).value == 1 + 1 + ord(account) % 5
        assert online.get(account, as_of=4).value == 1 + ord(account) % 5
        assert online.get(account, as_of=5).value == 0


def test_history_round_trip_by_day(tmp_path):
    writer = HistoryWriter(tmp_path, "f", "v1", rows_per_flush=3)
    day = 86_400_000
    writer.append(pa.array([b"a", b"b"]), np.array([1, day + 5]), np.array([1, 2]))
    writer.append(pa.array([b"c"]), np.array([2 * day]), np.array([7]))
    writer.append(pa.array([b"d"]), np.array([3]), np.array([9]))
    writer.close()
    table = read_history(tmp_path, "f")
    rows = sorted(
        zip(
            table.column("account").to_pylist(),
            table.column("value").to_pylist(),
            table.column("pipeline_version").to_pylist(),
            strict=True,
        )
    )
    assert rows == [("a", 1, "v1"), ("b", 2, "v1"), ("c", 7, "v1"), ("d", 9, "v1")]
    days = sorted(p.name for p in (tmp_path / "f").iterdir())
    assert days == ["day=1970-01-01", "day=1970-01-02", "day=1970-01-03"]


def _store_with(tmp_path, rows):
    """A 2-shard state dir holding `rows` of (account, max_bucket, updated_at, counts)."""
    layout = StateLayout(shards=2, bucket_ms=100_000, window_buckets=4)
    layout.ensure(tmp_path)
    for account, m, updated, counts in rows:
        shard = shard_of(account, layout.shards)
        store = RollingStateStore(StateLayout.shard_dir(tmp_path, shard), feature=1, window=4)
        rec = empty_records(1, 4)
        rec["max_bucket"], rec["updated_at"], rec["counts"][0] = m, updated, counts
        store.commit([account], rec, {})
        store.close()
    return layout


@settings(max_examples=60, deadline=None)
@given(
    updated=st.lists(st.integers(0, 1_000_000), min_size=1, max_size=6),
    as_of=st.integers(0, 2_000_000),
)
def test_get_features_status_follows_ttl_and_window(tmp_path_factory, updated, as_of):
    tmp = tmp_path_factory.mktemp("online")
    rows = [(f"a{i}".encode(), u // 100_000, u, [i + 1, 0, 2, 0]) for i, u in enumerate(updated)]
    _store_with(tmp, rows)
    store = OnlineStore(tmp)
    ttl = store.definition.ttl_ms
    got = store.get_features([r[0] for r in rows] + [b"nobody"], as_of=as_of)
    store.close()
    for (account, m, u, counts), reads in zip(rows, got, strict=False):
        read = reads["signal_errors_24h"]
        now = as_of // 100_000
        expected = sum(c for k, c in enumerate(counts) if now - 3 <= m - k <= now)
        assert read.value == expected, account
        assert read.updated_at == u
        assert read.status == ("fresh" if as_of - u <= ttl else "stale")
        assert read.version == store.definition.version
    assert got[-1]["signal_errors_24h"] == FeatureRead(
        None, None, store.definition.version, "missing"
    )


def test_get_features_per_entity_times_and_unknown_feature(tmp_path):
    _store_with(tmp_path, [(b"a", 0, 300, [5, 0, 0, 0])])
    store = OnlineStore(tmp_path)
    ttl = store.definition.ttl_ms
    fresh, stale = store.get_features([b"a", "a"], ["signal_errors_24h"], as_of=[300, 301 + ttl])
    assert (fresh["signal_errors_24h"].status, stale["signal_errors_24h"].status) == (
        "fresh",
        "stale",
    )
    with pytest.raises(KeyError, match="serves no feature 'nope'"):
        store.get_features([b"a"], ["nope"])
    with pytest.raises(ValueError, match="1 entities but 2"):
        store.get_features([b"a"], as_of=[1, 2])
    store.close()
