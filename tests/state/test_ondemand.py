"""On-demand answers: key encoding, store round trips, pruning, and a reader in another process."""

import subprocess
import sys
import textwrap

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from streamml.state import keys
from streamml.state.layout import StateLayout
from streamml.state.ondemand import OnDemandReader, OnDemandStore, is_fresh, values_service

accounts = st.binary(max_size=64)
services = st.text(max_size=30)


@given(services, accounts)
def test_ondemand_key_round_trip(service, account):
    assert keys.decode_ondemand_key(keys.ondemand_key(service, account)) == (service, account)


@given(services, accounts, accounts)
def test_ondemand_keys_of_one_service_sort_like_accounts(service, a, b):
    assert (keys.ondemand_key(service, a) < keys.ondemand_key(service, b)) == (a < b)


@given(services, services, accounts, accounts)
def test_services_are_isolated(s1, s2, a, b):
    k = keys.ondemand_key(s1, a)
    assert k.startswith(keys.ondemand_prefix(s1))
    if s1 != s2:
        assert not k.startswith(keys.ondemand_prefix(s2))
        assert keys.decode_ondemand_key(k) != keys.decode_ondemand_key(keys.ondemand_key(s2, b))


@given(services, accounts, st.integers(0, 0xFFFF), st.text(max_size=20))
def test_ondemand_namespace_is_isolated_from_the_others(service, account, feature, name):
    k = keys.ondemand_key(service, account)
    for other in (keys.account_prefix(feature), keys.position_key(""), keys.meta_key(name)):
        assert not k.startswith(other)
        assert not other.startswith(keys.ondemand_prefix(service))
    assert not k.startswith(keys.outbox_prefix(name))


def test_decode_rejects_other_keys():
    with pytest.raises(ValueError, match="not an on-demand key"):
        keys.decode_ondemand_key(keys.account_key(1, b"a"))
    with pytest.raises(ValueError, match="truncated"):
        keys.decode_ondemand_key(keys.ondemand_prefix("telemetry")[:-2])


def test_is_fresh_is_inclusive_of_the_ttl():
    assert is_fresh(1_000, 1_500, 500)
    assert not is_fresh(1_000, 1_501, 500)


@pytest.fixture
def store(tmp_path):
    s = OnDemandStore(tmp_path, layout=StateLayout(shards=4))
    yield s
    s.close()


def test_put_get_round_trip_per_service_and_shard(store, tmp_path):
    doc = orjson.dumps({"rssi": -61, "modem": "ok"})
    shard = store.shard_of(b"acct-1")
    store.put_many(shard, "telemetry", [(b"acct-1", 1_700_000_000_123, doc)])
    store.put_many(shard, "network", [(b"acct-1", 5, b"other")])
    assert store.get_many(shard, "telemetry", [b"nobody", b"acct-1"]) == [
        None,
        (1_700_000_000_123, doc),
    ]
    assert store.get_many(shard, "network", [b"acct-1"]) == [(5, b"other")]
    assert store.get_many(shard, "telemetr", [b"acct-1"]) == [None]
    store.put_many(shard, "telemetry", [(b"acct-1", 1_700_000_000_999, b"{}")])
    assert store.get_many(shard, "telemetry", [b"acct-1"]) == [(1_700_000_000_999, b"{}")]
    assert StateLayout.ondemand_dir(tmp_path, shard).is_dir()


def test_answers_and_their_values_come_from_one_read(store):
    shard = store.shard_of(b"acct-1")
    store.put_many(shard, "telemetry", [(b"acct-1", 10, b'{"a": 1}'), (b"acct-2", 11, b"{}")])
    store.put_many(shard, values_service("telemetry"), [(b"acct-1", 10, b'{"a": 1.0}')])
    got = store.get_with_values(shard, "telemetry", [b"acct-1", b"acct-2", b"nobody"])
    assert got == [
        ((10, b'{"a": 1}'), (10, b'{"a": 1.0}')),
        ((11, b"{}"), None),
        (None, None),
    ]
    assert got == [
        (a, v)
        for a, v in zip(
            store.get_many(shard, "telemetry", [b"acct-1", b"acct-2", b"nobody"]),
            store.get_many(shard, values_service("telemetry"), [b"acct-1", b"acct-2", b"nobody"]),
            strict=True,
        )
    ]
    assert store.get_with_values(shard, "telemetry", []) == []


def test_lookup_routes_accounts_to_their_shards(store):
    items = [(f"a{i}".encode(), i, f"p{i}".encode()) for i in range(50)]
    by_shard: dict[int, list] = {}
    for item in items:
        by_shard.setdefault(store.shard_of(item[0]), []).append(item)
    assert len(by_shard) > 1
    for shard, part in by_shard.items():
        store.put_many(shard, "telemetry", part)
    wanted = [b"a7", b"zz", b"a42", b"a0"]
    assert store.lookup("telemetry", wanted) == [(7, b"p7"), None, (42, b"p42"), (0, b"p0")]
    other = next(s for s in range(4) if s != store.shard_of(b"a7"))
    assert store.get_many(other, "telemetry", [b"a7"]) == [None]


def test_prune_older_than_deletes_only_old_entries(store):
    store.put_many(0, "telemetry", [(b"old", 10, b"x"), (b"edge", 100, b"y"), (b"new", 200, b"z")])
    store.put_many(0, "network", [(b"old", 10, b"n")])
    assert store.prune_older_than(0, 100, service="telemetry") == 1
    assert store.get_many(0, "telemetry", [b"old", b"edge", b"new"]) == [
        None,
        (100, b"y"),
        (200, b"z"),
    ]
    assert store.get_many(0, "network", [b"old"]) == [(10, b"n")]
    assert store.prune_older_than(0, 150) == 2
    assert store.get_many(0, "network", [b"old"]) == [None]
    assert store.get_many(0, "telemetry", [b"new"]) == [(200, b"z")]


def test_store_requires_a_layout_or_an_existing_state_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="no state layout"):
        OnDemandStore(tmp_path / "empty")
    with pytest.raises(ValueError, match="shard must be in"):
        s = OnDemandStore(tmp_path, layout=StateLayout(shards=2))
        try:
            s.get_many(2, "telemetry", [b"a"])
        finally:
            s.close()


def test_reader_in_another_process_sees_writes_while_the_writer_holds_the_db(store, tmp_path):
    shard = store.shard_of(b"acct-9")
    store.put_many(shard, "telemetry", [(b"acct-9", 123, b'{"ok":true}')])
    reader_code = textwrap.dedent(
        f"""
        from streamml.state.ondemand import OnDemandReader
        r = OnDemandReader({str(tmp_path)!r})
        print(r.lookup("telemetry", [b"acct-9", b"missing"]))
        r.close()
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", reader_code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[(123, b'{\"ok\":true}'), None]"

    reader = OnDemandReader(tmp_path)
    assert reader.lookup("telemetry", [b"acct-9"]) == [(123, b'{"ok":true}')]
    store.put_many(shard, "telemetry", [(b"acct-9", 456, b"{}")])
    assert reader.lookup("telemetry", [b"acct-9"]) == [(123, b'{"ok":true}')]
    reader.refresh()
    assert reader.lookup("telemetry", [b"acct-9"]) == [(456, b"{}")]
    reader.close()


def test_a_following_reader_catches_up_without_reopening(tmp_path):
    layout = StateLayout(shards=2)
    writer = OnDemandStore(tmp_path, layout=layout)
    shard = writer.shard_of(b"acct")
    writer.put_many(shard, "svc", [(b"acct", 1, b"one")])
    reader = OnDemandReader(tmp_path, follow=True)
    assert reader.lookup("svc", [b"acct"]) == [(1, b"one")]
    db = reader._dbs[shard]
    writer.put_many(shard, "svc", [(b"acct", 2, b"two")])
    assert reader.lookup("svc", [b"acct"]) == [(1, b"one")]  # not yet caught up
    reader.refresh()
    assert reader.lookup("svc", [b"acct"]) == [(2, b"two")]
    assert reader._dbs[shard] is db  # caught up, not reopened
    reader.refresh()  # nothing new: skipped
    reader.close()
    writer.close()
