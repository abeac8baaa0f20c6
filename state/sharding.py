"""Stable account-to-shard routing, the same in every process and on every machine.

Two hash functions, fixed per state dir by its layout (`StateLayout.shard_hash`):

- ``crc32`` (the default): the CRC-32 of the account's bytes (as `zlib.crc32`) passed through
  a multiplicative mix. `hash_many` computes it for a whole column of accounts with numpy,
  `hash_account` for one account with zlib.
- ``murmur2``: Kafka's default key partitioner, ``murmur2(key) & 0x7fffffff`` (the Java
  client's and kafka-python's). With it, an account's shard modulo P is the partition Kafka's
  default partitioner gives its key in a topic of P partitions, whenever P divides the shard
  count: every account of shard s arrives on partition ``s mod P``
  (`streamml.operators.shard`, partition routing).

An account's shard is its hash modulo the shard count.
"""

from __future__ import annotations

import zlib
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "MAX_ACCOUNT_BYTES",
    "SHARD_HASHES",
    "hash_account",
    "hash_many",
    "murmur2_account",
    "murmur2_many",
    "shard_many",
    "shard_of",
]

MAX_ACCOUNT_BYTES = 256
SHARD_HASHES = ("crc32", "murmur2")
_GOLDEN = 0x9E3779B1
_M2_SEED = 0x9747B28C
_M2_M = 0x5BD1E995


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


def _columns(accounts: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (data bytes, row starts, row lengths) of a binary or string array without nulls."""
    import pyarrow as pa  # here, so reading one account's shard does not load pyarrow

    n = len(accounts)
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
    return data, offsets[:-1], lengths


def hash_many(accounts: pa.Array) -> np.ndarray:
    """Return the hash of every account of a binary or string array without nulls."""
    n = len(accounts)
    if n == 0:
        return np.empty(0, dtype=np.uint64)
    data, starts, lengths = _columns(accounts)
    crc = np.full(n, 0xFFFFFFFF, dtype=np.uint32)
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


def murmur2_many(accounts: pa.Array) -> np.ndarray:
    """Return Kafka's default-partitioner hash (``murmur2 & 0x7fffffff``) of every account."""
    n = len(accounts)
    if n == 0:
        return np.empty(0, dtype=np.uint64)
    data, starts, lengths = _columns(accounts)
    out = np.empty(n, dtype=np.uint32)
    m = np.uint32(_M2_M)
    distinct = np.unique(lengths)
    with np.errstate(over="ignore"):
        for length in distinct.tolist():
            rows = np.flatnonzero(lengths == length) if distinct.size > 1 else slice(None)
            row_starts = starts[rows]
            h = np.full(len(row_starts), _M2_SEED ^ length, dtype=np.uint32)
            for j in range(0, length - length % 4, 4):
                at = row_starts + j
                k = (
                    data[at].astype(np.uint32)
                    | (data[at + 1].astype(np.uint32) << np.uint32(8))
                    | (data[at + 2].astype(np.uint32) << np.uint32(16))
                    | (data[at + 3].astype(np.uint32) << np.uint32(24))
                )
                k = k * m
                k ^= k >> np.uint32(24)
                k = k * m
                h = h * m
                h ^= k
            tail = length % 4
            base = row_starts + (length - tail)
            if tail == 3:
                h ^= data[base + 2].astype(np.uint32) << np.uint32(16)
            if tail >= 2:
                h ^= data[base + 1].astype(np.uint32) << np.uint32(8)
            if tail >= 1:
                h ^= data[base].astype(np.uint32)
                h = h * m
            h ^= h >> np.uint32(13)
            h = h * m
            h ^= h >> np.uint32(15)
            out[rows] = h
    return (out & np.uint32(0x7FFFFFFF)).astype(np.uint64)


def murmur2_account(account: bytes) -> int:
    """Return Kafka's default-partitioner hash of one account, equal to `murmur2_many` on it."""
    if len(account) > MAX_ACCOUNT_BYTES:
        raise ValueError(f"accounts must be at most {MAX_ACCOUNT_BYTES} bytes, got {len(account)}")
    mask = 0xFFFFFFFF
    length = len(account)
    h = (_M2_SEED ^ length) & mask
    whole = length - length % 4
    for j in range(0, whole, 4):
        k = int.from_bytes(account[j : j + 4], "little")
        k = (k * _M2_M) & mask
        k ^= k >> 24
        k = (k * _M2_M) & mask
        h = ((h * _M2_M) & mask) ^ k
    tail = account[whole:]
    if len(tail) == 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h ^= tail[0]
        h = (h * _M2_M) & mask
    h ^= h >> 13
    h = (h * _M2_M) & mask
    h ^= h >> 15
    return h & 0x7FFFFFFF


def _check_hash(shard_hash: str) -> None:
    if shard_hash not in SHARD_HASHES:
        raise ValueError(f"shard_hash must be one of {', '.join(SHARD_HASHES)}, got {shard_hash!r}")


def shard_many(accounts: pa.Array, shards: int, shard_hash: str = "crc32") -> np.ndarray:
    """Return the shard (0..shards-1) of every account under `shard_hash`."""
    _check_hash(shard_hash)
    hashed = murmur2_many(accounts) if shard_hash == "murmur2" else hash_many(accounts)
    return (hashed % np.uint64(shards)).astype(np.int64)


def shard_of(account: bytes, shards: int, shard_hash: str = "crc32") -> int:
    """Return the shard of one account, equal to `shard_many` on it."""
    _check_hash(shard_hash)
    if shard_hash == "murmur2":
        return murmur2_account(account) % shards
    return hash_account(account) % shards
