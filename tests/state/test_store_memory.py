"""Every RocksDB database a process opens uses the process's memory budget, new or reopened."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rocksdict import AccessType
from streamml.state.layout import StateLayout
from streamml.state.ondemand import OnDemandStore
from streamml.state.outcomes import JoinStore
from streamml.state.rolling_store import RollingStateStore, StoreTuning, _options, open_db

MiB = 1 << 20
BUDGET = 24 * MiB  # unlike RocksDB's default block cache (8 MiB) and the default budget


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
        assert capacity(db) == BUDGET
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
            assert capacity(store._db) == BUDGET
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
        assert capacity(join._db) == BUDGET
    finally:
        join.close()
    store = OnDemandStore(tmp_path / "state", layout=StateLayout(shards=1), tuning=tuning)
    store.put_many(0, "svc", [(b"acct", 1, b"{}")])
    store.close()
    store = OnDemandStore(tmp_path / "state", tuning=tuning)
    try:
        assert capacity(store._open(0)) == BUDGET
    finally:
        store.close()
