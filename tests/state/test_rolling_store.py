"""RocksDB settings of the rolling state store: block size and memory budget."""

from __future__ import annotations

import numpy as np
import pytest
from streamml.state.rolling_store import RollingStateStore, StoreTuning, empty_records

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
