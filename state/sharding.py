"""Stable account-to-shard routing, the same in every process and on every machine.

An account's hash is the CRC-32 of its bytes (as `zlib.crc32`) passed through a multiplicative
mix; its shard is that hash modulo the shard count. `hash_many` computes it for a whole column
of accounts with numpy, `hash_account` for one account with zlib.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["MAX_ACCOUNT_BYTES", "hash_account", "hash_many", "shard_many", "shard_of"]

MAX_ACCOUNT_BYTES = 256
_GOLDEN = 0x9E3779B1


def _crc_table() -> np.ndarray:
    table = np.empty(256, dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        table[i] = c
    return table


_TABLE = _crc_table()


def _mix(crc: np.ndarray) -> np.ndarray:
    return ((crc.astype(np.uint64) * np.uint64(_GOLDEN)) & np.uint64(0xFFFFFFFF)) >> np.uint64(8)


def hash_many(accounts: pa.Array) -> np.ndarray:
    """Return the hash of every account of a binary or string array without nulls."""
    import pyarrow as pa  # here, so reading one account's shard does not load pyarrow

    n = len(accounts)
    if n == 0:
        return np.empty(0, dtype=np.uint64)
    if accounts.null_count:
        raise ValueError("accounts must not contain nulls")
    if pa.types.is_string(accounts.type):
        accounts = accounts.cast(pa.binary())
    if not pa.types.is_binary(accounts.type):
        raise TypeError(f"expected a binary or string array, got {accounts.type}")
    buffers = accounts.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int32)[accounts.offset : accounts.offset + n + 1]
    offsets = offsets.astype(np.int64)
    lengths = np.diff(offsets)
    if int(lengths.max(initial=0)) > MAX_ACCOUNT_BYTES:
        raise ValueError(f"accounts must be at most {MAX_ACCOUNT_BYTES} bytes")
    data = (
        np.frombuffer(buffers[2], dtype=np.uint8)
        if buffers[2] is not None
        else np.zeros(1, np.uint8)
    )
    crc = np.full(n, 0xFFFFFFFF, dtype=np.uint32)
    starts = offsets[:-1]
    distinct = np.unique(lengths)
    for length in distinct.tolist():
        if length == 0:
            continue
        rows = np.flatnonzero(lengths == length) if distinct.size > 1 else slice(None)
        matrix = data[starts[rows][None, :] + np.arange(length)[:, None]]
        c = crc[rows]
        for j in range(length):
            c = _TABLE[(c ^ matrix[j]) & 0xFF] ^ (c >> np.uint32(8))
        crc[rows] = c
    return _mix(crc ^ np.uint32(0xFFFFFFFF))


def hash_account(account: bytes) -> int:
    """Return the hash of one account, equal to `hash_many` on it."""
    if len(account) > MAX_ACCOUNT_BYTES:
        raise ValueError(f"accounts must be at most {MAX_ACCOUNT_BYTES} bytes, got {len(account)}")
    return ((zlib.crc32(account) * _GOLDEN) & 0xFFFFFFFF) >> 8


def shard_many(accounts: pa.Array, shards: int) -> np.ndarray:
    """Return the shard (0..shards-1) of every account."""
    return (hash_many(accounts) % np.uint64(shards)).astype(np.int64)


def shard_of(account: bytes, shards: int) -> int:
    """Return the shard of one account, equal to `shard_many` on it."""
    return hash_account(account) % shards
