"""RocksDB settings of the rolling state store: block size and memory budget."""

from __future__ import annotations

import os

import numpy as np
import pytest
from streamml.state.rolling_store import (
    CODEC_KEY,
    RollingStateStore,
    StoreTuning,
    empty_records,
    primary_files,
)

WINDOW = 24


def _records(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rec = empty_records(n, WINDOW)
    rec["max_bucket"] = rng.integers(0, 1000, n)
    rec["updated_at"] = rng.integers(0, 1 << 40, n)
    rec["counts"] = rng.integers(0, 5, (n, WINDOW))
    return rec


@pytest.mark.parametrize("block_bytes", [1 << 10, 4 << 10, 16 << 10, 64 << 10])
def test_records_read_back_whatever_the_block_size(tmp_path, block_bytes):
    accounts = [f"acct-{i:08d}".encode() for i in range(3000)]
    rec = _records(len(accounts), block_bytes)
    tuning = StoreTuning(memory_bytes=8 << 20, write_buffer_bytes=64 << 10, block_bytes=block_bytes)
    store = RollingStateStore(tmp_path / "shard", feature=1, window=WINDOW, tuning=tuning)
    try:
        for start in range(0, len(accounts), 500):
            part = slice(start, start + 500)
            store.commit(accounts[part], rec[part], {"p": start})
        unknown = [b"never-seen"]
        got = store.load(accounts[::-1] + unknown)
    finally:
        store.close()
    assert got[:-1].tobytes() == rec[::-1].tobytes()
    assert got[-1]["max_bucket"] == -1
    # Files written with one block size are read with any other.
    other = StoreTuning(block_bytes=4 << 10 if block_bytes != 4 << 10 else 16 << 10)
    reopened = RollingStateStore(tmp_path / "shard", feature=1, window=WINDOW, tuning=other)
    try:
        assert reopened.load(accounts).tobytes() == rec.tobytes()
        assert reopened.applied_position("p") == 2500
    finally:
        reopened.close()


def test_default_block_size():
    assert StoreTuning().block_bytes == 16 << 10


@pytest.mark.parametrize("block_bytes", [0, 512, (4 << 20) + 1])
def test_block_size_out_of_range_is_refused(block_bytes):
    with pytest.raises(ValueError, match="block_bytes in \\[1 KiB, 4 MiB\\], got"):
        StoreTuning(block_bytes=block_bytes)


def _stored_values(path, feature=1) -> dict[bytes, bytes]:
    from rocksdict import AccessType
    from streamml.state import keys
    from streamml.state.rolling_store import _options, open_db

    db = open_db(path, _options(StoreTuning(), create=False), AccessType.read_only(False))
    try:
        prefix = keys.account_prefix(feature)
        out = {k[len(prefix) :]: v for k, v in db.items(from_key=prefix) if k.startswith(prefix)}
        out[b"codec-key"] = db.get(CODEC_KEY)
        return out
    finally:
        db.close()


def test_a_new_database_stores_sparse_values_and_names_its_codec(tmp_path):
    accounts = [f"acct-{i:08d}".encode() for i in range(1000)]
    rec = _records(len(accounts), 3)
    rec["counts"][:, 3:] = 0  # mostly zero, as most accounts are
    store = RollingStateStore(tmp_path / "shard", feature=1, window=WINDOW)
    try:
        assert store.codec is None  # nothing written yet: decided by the first records
        store.commit([], rec[:0], {"p": 0})
        assert store.codec is None
        store.commit(accounts, rec, {"p": 1})
        assert store.codec == "sparse"
        assert store.load(accounts).tobytes() == rec.tobytes()
        assert store.load_one(accounts[7]).tobytes() == rec[7].tobytes()
    finally:
        store.close()
    stored = _stored_values(tmp_path / "shard")
    assert stored.pop(b"codec-key") == b"sparse-v1"
    assert max(len(v) for v in stored.values()) < rec.dtype.itemsize
    reader = RollingStateStore(tmp_path / "shard", feature=1, window=WINDOW, read_only=True)
    try:
        assert reader.codec == "sparse"
        got = dict(reader.iter_records(chunk=7))
        assert [got[a].tobytes() for a in accounts] == [r.tobytes() for r in rec]
        found, present = reader.load_records(1, [*accounts[:3], b"nobody"], empty_records(1, 24))
        assert found[:3].tobytes() == rec[:3].tobytes() and present.tolist() == [1, 1, 1, 0]
    finally:
        reader.close()


def test_a_raw_database_still_reads_and_continues_raw(tmp_path):
    """A database written before the codec (raw values, no codec key) keeps its format."""
    accounts = [f"acct-{i:08d}".encode() for i in range(500)]
    rec = _records(len(accounts), 5)
    path = tmp_path / "shard"
    old = RollingStateStore(path, feature=1, window=WINDOW, tuning=StoreTuning(codec="raw"))
    try:
        old.commit(accounts[:300], rec[:300], {"p": 299})
    finally:
        old.close()
    stored = _stored_values(path)
    # What the code before the codec wrote: the record's bytes, no codec key.
    assert stored.pop(b"codec-key") is None
    assert stored == {a: rec[i].tobytes() for i, a in enumerate(accounts[:300])}
    store = RollingStateStore(path, feature=1, window=WINDOW)  # default codec: sparse
    try:
        assert store.codec == "raw"
        assert store.load(accounts[:300]).tobytes() == rec[:300].tobytes()
        store.commit(accounts[200:], rec[200:], {"p": 499})
        assert store.load(accounts).tobytes() == rec.tobytes()
    finally:
        store.close()
    stored = _stored_values(path)
    assert stored.pop(b"codec-key") is None
    assert stored == {a: rec[i].tobytes() for i, a in enumerate(accounts)}
    reader = RollingStateStore(path, feature=1, window=WINDOW, read_only=True)
    try:
        assert reader.codec == "raw"
        assert reader.load_one(accounts[42]).tobytes() == rec[42].tobytes()
        assert [r.tobytes() for _a, r in reader.iter_records()] == [r.tobytes() for r in rec]
    finally:
        reader.close()


def test_a_secondary_reader_of_an_empty_database_learns_the_codec(tmp_path):
    """A reader that opened before the first records decodes them with the codec they came with."""
    accounts = [b"a", b"b"]
    rec = _records(2, 9)
    path = tmp_path / "shard"
    writer = RollingStateStore(path, feature=1, window=WINDOW)
    reader = RollingStateStore(
        path, feature=1, window=WINDOW, read_only=True, secondary_dir=tmp_path / "secondary"
    )
    try:
        assert reader.load(accounts)["max_bucket"].tolist() == [-1, -1]
        writer.commit(accounts, rec, {"p": 1})
        reader.catch_up()
        assert reader.load(accounts).tobytes() == rec.tobytes()
        assert reader.codec == "sparse"
    finally:
        reader.close()
        writer.close()


def test_unknown_codec_names_are_refused():
    with pytest.raises(ValueError, match="codec must be sparse or raw"):
        StoreTuning(codec="zstd")
    with pytest.raises(ValueError, match="compression must be lz4 or none"):
        StoreTuning(compression="snappy")


def test_primary_files_counts_a_log_deleted_while_listed_as_a_change(tmp_path, monkeypatch):
    (tmp_path / "000004.log").write_bytes(b"x")
    (tmp_path / "CURRENT").write_bytes(b"MANIFEST-000001\n")
    before = primary_files(tmp_path)
    real_scandir = os.scandir

    class _Listing:
        """The listing of a directory whose log the primary deletes before it is looked at."""

        def __init__(self, path):
            self._inner = real_scandir(path)

        def __enter__(self):
            entries = list(self._inner)
            (tmp_path / "000004.log").unlink()
            return entries

        def __exit__(self, *exc):
            self._inner.close()

    monkeypatch.setattr(os, "scandir", _Listing)
    during = primary_files(tmp_path)
    monkeypatch.undo()
    after = primary_files(tmp_path)
    assert ("000004.log", -1, -1) in during
    assert len({before, during, after}) == 3
