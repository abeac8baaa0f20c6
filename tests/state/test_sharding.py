import zlib

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st
from streamml.state.sharding import MAX_ACCOUNT_BYTES, hash_account, hash_many, shard_many, shard_of


@given(st.lists(st.binary(min_size=1, max_size=MAX_ACCOUNT_BYTES), max_size=60), st.integers(1, 64))
def test_vectorised_hash_equals_scalar(accounts, shards):
    arr = pa.array(accounts, type=pa.binary())
    assert hash_many(arr).tolist() == [hash_account(a) for a in accounts]
    assert shard_many(arr, shards).tolist() == [shard_of(a, shards) for a in accounts]


def test_hash_is_crc32_based_and_stable():
    # Routing must never change between versions: existing state directories depend on it.
    assert (
        hash_account(b"acct-00000001")
        == ((zlib.crc32(b"acct-00000001") * 0x9E3779B1) & 0xFFFFFFFF) >> 8
    )


def test_sliced_arrays_hash_like_their_values():
    arr = pa.array([b"a", b"bb", b"ccc", b"dddd"], type=pa.binary()).slice(1, 2)
    assert hash_many(arr).tolist() == [hash_account(b"bb"), hash_account(b"ccc")]


def test_shards_are_balanced():
    arr = pa.array([f"acct-{i:08d}".encode() for i in range(64_000)], type=pa.binary())
    counts = np.bincount(shard_many(arr, 16), minlength=16)
    assert counts.min() > 0.9 * 4000 and counts.max() < 1.1 * 4000


def test_too_long_account_is_refused():
    with pytest.raises(ValueError):
        hash_account(b"x" * (MAX_ACCOUNT_BYTES + 1))
