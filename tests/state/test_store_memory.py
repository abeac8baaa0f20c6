"""Every RocksDB database a process opens uses the process's memory budget, new or reopened."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
from rocksdict import AccessType
from streamml.state import rocksdb_options
from streamml.state.layout import StateLayout
from streamml.state.ondemand import OnDemandStore
from streamml.state.outcomes import JoinStore
from streamml.state.rocksdb_options import (
    StoreTuning,
    _options,
    memory_budget,
    open_db,
    table_bytes,
)
from streamml.state.rolling_store import RollingStateStore

MiB = 1 << 20
BUDGET = 24 * MiB  # unlike RocksDB's default block cache (8 MiB) and the default budget
ROCKSDB_DEFAULT_CACHE = 8 * MiB


def capacity(db) -> int:
    return db.property_int_value("rocksdb.block-cache-capacity")


def shared_usage(db) -> int:
    return db.property_int_value("rocksdb.block-cache-usage")


@pytest.mark.parametrize("access", ["read_write", "read_only", "secondary"])
def test_a_reopened_database_keeps_the_shared_cache(tmp_path: Path, access: str) -> None:
    tuning = StoreTuning(memory_bytes=BUDGET)
    first = open_db(tmp_path / "db", _options(tuning, create=True))
    first[b"k"] = b"v"
    first.close()
    kinds = {
        "read_write": None,
        "read_only": AccessType.read_only(False),
        "secondary": AccessType.secondary(str(tmp_path / "secondary")),
    }
    opts = _options(tuning, create=False)
    opts.set_max_open_files(-1)
    db = open_db(tmp_path / "db", opts, kinds[access])
    try:
        assert capacity(db) == memory_budget(tuning).capacity
        assert db[b"k"] == b"v"
    finally:
        db.close()


def test_the_shards_of_a_state_dir_share_one_cache_after_a_restart(tmp_path: Path) -> None:
    tuning = StoreTuning(memory_bytes=BUDGET)
    paths = [tmp_path / f"shard-{i}" for i in range(3)]
    accounts = [f"a{i}".encode() for i in range(2000)]
    for path in paths:
        store = RollingStateStore(path, feature=0, window=24, tuning=tuning)
        recs = store.load(accounts)
        recs["max_bucket"] = np.arange(len(accounts))
        store.commit(accounts, recs, {})
        store._db.flush()
        store.close()
    stores = [RollingStateStore(p, feature=0, window=24, tuning=tuning) for p in paths]
    try:
        for store in stores:
            assert capacity(store._db) == memory_budget(tuning).capacity
            assert list(store.load(accounts)["max_bucket"]) == list(range(len(accounts)))
        # one cache: the blocks every shard read show in the usage every shard reports
        usages = {shared_usage(s._db) for s in stores}
        assert len(usages) == 1, usages
    finally:
        for store in stores:
            store.close()


def test_the_ondemand_and_join_stores_reopen_within_the_budget(tmp_path: Path) -> None:
    tuning = StoreTuning(memory_bytes=BUDGET)
    JoinStore(tmp_path / "join", undo=False, tuning=tuning).close()
    join = JoinStore(tmp_path / "join", undo=False, tuning=tuning)
    try:
        assert capacity(join._db) == memory_budget(tuning).capacity
    finally:
        join.close()
    store = OnDemandStore(tmp_path / "state", layout=StateLayout(shards=1), tuning=tuning)
    store.put_many(0, "svc", [(b"acct", 1, b"{}")])
    store.close()
    store = OnDemandStore(tmp_path / "state", tuning=tuning)
    try:
        assert capacity(store._open(0)) == memory_budget(tuning).capacity
    finally:
        store.close()


def test_the_budgets_cache_is_not_rocksdbs_default() -> None:
    assert memory_budget(StoreTuning(memory_bytes=BUDGET)).capacity != ROCKSDB_DEFAULT_CACHE


def _dense(store: RollingStateStore, accounts: list[bytes], seed: int) -> np.ndarray:
    """The stored records of `accounts` with every bucket set: no zero word to leave out."""
    recs = store.load(accounts)
    recs["counts"] = np.random.default_rng(seed).integers(1, 1 << 30, recs["counts"].shape)
    return recs


def _rewrite_all(store: RollingStateStore, accounts: list[bytes], round_: int) -> None:
    """Read every account, write each back changed, and compact: the old files' blocks die."""
    recs = _dense(store, accounts, round_)
    recs["max_bucket"] = round_
    store.commit(accounts, recs, {})
    store._db.flush()
    store._db.compact_range(None, None)


def test_a_small_state_holds_no_more_cache_than_its_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rocksdb_options, "_RESIZE_INTERVAL_S", 0.0)
    tuning = StoreTuning(memory_bytes=96 * MiB)
    budget = memory_budget(tuning)
    store = RollingStateStore(tmp_path / "shard", feature=0, window=24, tuning=tuning)
    accounts = [f"acct-{i:07d}".encode() for i in range(20_000)]
    try:
        most = 0
        for round_ in range(40):
            _rewrite_all(store, accounts, round_)
            data = table_bytes(store._db)
            assert 0 < data < 8 * MiB
            expected = budget.memtable_bytes + max(16 * MiB, data)
            assert budget.capacity == expected
            assert capacity(store._db) == expected
            most = max(most, shared_usage(store._db))
        # each round left about 2.7 MB of blocks of deleted files: 108 MB over 40 rounds, more
        # than the budget, had the cache kept them
        assert most <= budget.memtable_bytes + 16 * MiB + MiB
        assert list(store.load(accounts[:3])["max_bucket"]) == [39, 39, 39]
    finally:
        store.close()


def test_a_state_larger_than_the_budget_gets_all_of_it(tmp_path: Path) -> None:
    tuning = StoreTuning(memory_bytes=20 * MiB)
    budget = memory_budget(tuning)
    store = RollingStateStore(tmp_path / "shard", feature=0, window=24, tuning=tuning)
    accounts = [f"acct-{i:07d}".encode() for i in range(150_000)]
    try:
        store.commit(accounts, _dense(store, accounts, 0), {})
        store._db.flush()
        assert table_bytes(store._db) > 16 * MiB
        assert budget.resize() == 20 * MiB
        assert capacity(store._db) == 20 * MiB
    finally:
        store.close()


def test_the_budget_skips_closed_stores_and_forgets_dropped_ones(tmp_path: Path) -> None:
    tuning = StoreTuning(memory_bytes=40 * MiB)
    budget = memory_budget(tuning)
    accounts = [f"acct-{i:07d}".encode() for i in range(150_000)]
    kept = RollingStateStore(tmp_path / "kept", feature=0, window=24, tuning=tuning)
    closed = RollingStateStore(tmp_path / "closed", feature=0, window=24, tuning=tuning)
    dropped = RollingStateStore(tmp_path / "dropped", feature=0, window=24, tuning=tuning)
    try:
        for written in (closed, dropped):
            written.commit(accounts, _dense(written, accounts, 0), {})
            written._db.flush()
        del written
        big = budget.resize()
        closed.close()
        dropped_db = dropped._db
        del dropped
        gc.collect()
        assert budget.resize() < big
        assert budget.resize() == budget.memtable_bytes + 16 * MiB
        dropped_db.close()
    finally:
        kept.close()
