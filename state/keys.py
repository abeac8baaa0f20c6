"""Key encoding for the RocksDB state: versioned, big-endian, prefix-separated.

Every key starts with the format version byte, then a one-byte namespace, then the namespace's
payload. Namespaces never share a prefix, so a prefix scan of one never sees another.

- account feature state: ``VERSION | b"A" | feature id (u16, big-endian) | account bytes``
- applied source position: ``VERSION | b"P" | partition name (UTF-8)``
- metadata: ``VERSION | b"M" | name (UTF-8)``
- outbox of emitted updates: ``VERSION | b"O" | len(partition) (u16) | partition | position (u64)``
- on-demand answer: ``VERSION | b"D" | len(service) (u16) | service (UTF-8) | account bytes``

The account is the last component, so keys of one feature (or one on-demand service) sort exactly
like their account bytes.
"""

from __future__ import annotations

import struct

__all__ = [
    "ACCOUNT_NS",
    "FORMAT_VERSION",
    "META_NS",
    "ONDEMAND_NS",
    "OUTBOX_NS",
    "POSITION_NS",
    "account_key",
    "account_prefix",
    "decode_account_key",
    "decode_ondemand_key",
    "decode_outbox_key",
    "decode_position_key",
    "meta_key",
    "ondemand_key",
    "ondemand_prefix",
    "outbox_key",
    "outbox_prefix",
    "position_key",
]

FORMAT_VERSION = 1
_V = bytes([FORMAT_VERSION])
ACCOUNT_NS = b"A"
POSITION_NS = b"P"
META_NS = b"M"
OUTBOX_NS = b"O"
ONDEMAND_NS = b"D"
_LEN = struct.Struct(">H")
_POS = struct.Struct(">Q")
_FEATURE = struct.Struct(">H")


def account_prefix(feature: int) -> bytes:
    """Return the prefix shared by every account key of `feature`."""
    if not 0 <= feature <= 0xFFFF:
        raise ValueError(f"feature id must be in [0, 65535], got {feature!r}")
    return _V + ACCOUNT_NS + _FEATURE.pack(feature)


def account_key(feature: int, account: bytes) -> bytes:
    """Return the key of `account`'s state for `feature`."""
    return account_prefix(feature) + account


def decode_account_key(key: bytes) -> tuple[int, bytes]:
    """Return `(feature, account)` from a key built by `account_key`."""
    if len(key) < 4 or key[:1] != _V or key[1:2] != ACCOUNT_NS:
        raise ValueError(f"not an account key of format version {FORMAT_VERSION}: {key[:16]!r}")
    return _FEATURE.unpack_from(key, 2)[0], key[4:]


def position_key(partition: str) -> bytes:
    """Return the key holding the last applied position of a source partition."""
    return _V + POSITION_NS + partition.encode("utf-8")


def decode_position_key(key: bytes) -> str:
    """Return the partition name from a key built by `position_key`."""
    if key[:1] != _V or key[1:2] != POSITION_NS:
        raise ValueError(f"not a position key of format version {FORMAT_VERSION}: {key[:16]!r}")
    return key[2:].decode("utf-8")


def meta_key(name: str) -> bytes:
    """Return the key of a metadata entry."""
    return _V + META_NS + name.encode("utf-8")


def outbox_prefix(partition: str) -> bytes:
    """Return the prefix of every outbox key of a source partition."""
    name = partition.encode("utf-8")
    if len(name) > 0xFFFF:
        raise ValueError(f"partition names are at most 65535 bytes, got {len(name)}")
    return _V + OUTBOX_NS + _LEN.pack(len(name)) + name


def outbox_key(partition: str, position: int) -> bytes:
    """Return the outbox key of the updates ending at `position` of a source partition."""
    if position < 0:
        raise ValueError(f"positions are >= 0, got {position}")
    return outbox_prefix(partition) + _POS.pack(position)


def decode_outbox_key(key: bytes) -> tuple[str, int]:
    """Return `(partition, position)` from a key built by `outbox_key`."""
    if key[:1] != _V or key[1:2] != OUTBOX_NS:
        raise ValueError(f"not an outbox key of format version {FORMAT_VERSION}: {key[:16]!r}")
    (n,) = _LEN.unpack_from(key, 2)
    return key[4 : 4 + n].decode("utf-8"), _POS.unpack_from(key, 4 + n)[0]


def ondemand_prefix(service: str) -> bytes:
    """Return the prefix shared by every on-demand key of `service`."""
    name = service.encode("utf-8")
    if len(name) > 0xFFFF:
        raise ValueError(f"service names are at most 65535 bytes, got {len(name)}")
    return _V + ONDEMAND_NS + _LEN.pack(len(name)) + name


def ondemand_key(service: str, account: bytes) -> bytes:
    """Return the key of the answer of `service` fetched for `account`."""
    return ondemand_prefix(service) + account


def decode_ondemand_key(key: bytes) -> tuple[str, bytes]:
    """Return `(service, account)` from a key built by `ondemand_key`."""
    if len(key) < 4 or key[:1] != _V or key[1:2] != ONDEMAND_NS:
        raise ValueError(f"not an on-demand key of format version {FORMAT_VERSION}: {key[:16]!r}")
    (n,) = _LEN.unpack_from(key, 2)
    if len(key) < 4 + n:
        raise ValueError(f"truncated on-demand key: {key[:16]!r}")
    return key[4 : 4 + n].decode("utf-8"), key[4 + n :]
