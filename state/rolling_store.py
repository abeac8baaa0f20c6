"""RocksDB-backed state of rolling bucket counts, one database per shard.

Each account's state is one fixed-size record (little-endian):
``max_bucket i64 | updated_at i64 | flags u32 | counts u32[window]``, where ``counts[k]`` is the
number of accepted events in bucket ``max_bucket - k``. A new account has ``max_bucket = -1``.
(Records of several features of one source have a larger dtype, see
`streamml.state.feature_records.RecordLayout`; everything below holds for them alike.)

How a record is stored is fixed per database by its value codec, named under the metadata key
`CODEC_KEY`: ``sparse`` (`streamml.state.value_codec.SparseCodec`: a bitmap of the record's
non-zero 4-byte words, then those words; 20-28 bytes for an account holding one or two events,
instead of 116), or, for a database without the key, ``raw``: the record's bytes as they are,
which every database written before the codec existed holds. A writer decides the codec of a
database that holds no account records yet when it writes its first ones (`StoreTuning.codec`,
default ``sparse``), and writes the key in the same WriteBatch; a database that already holds
records without the key stays ``raw``, so old state dirs read and continue as they were. Every
read (`load`, `load_records`, `load_one`, `iter_records`) decodes with the database's codec.

The last applied source position of every source partition is written in the same WriteBatch as
the state it produced, so a replay after a crash can skip what was already applied.

RocksDB's settings and the process's memory budget (`StoreTuning`, `open_db`) live in
`streamml.state.rocksdb_options`; they are importable from here too.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rocksdict import AccessType, Rdict, WriteBatch, WriteOptions
from streamml.state import keys
from streamml.state.rocksdb_options import StoreTuning, _options, memory_budget, open_db
from streamml.state.value_codec import CODECS, SparseCodec

__all__ = [
    "ALERT_FLAG",
    "CODECS",
    "CODEC_KEY",
    "RollingStateStore",
    "StoreTuning",
    "create_shard",
    "empty_records",
    "fill_records",
    "open_db",
    "record_dtype",
    "shard_positions",
    "stored_positions",
]

ALERT_FLAG = 1
_POSITION = np.dtype(">i8")
CODEC_KEY = keys.meta_key("value-codec")
"""Metadata key naming the value codec of a database's account records (absent: ``raw``)."""
_CODEC_TAG = b"sparse-v1"
_ACCOUNTS = keys.account_prefix(0)[:2]
"""The prefix of every account key, whatever its record id."""


def record_dtype(window: int) -> np.dtype:
    """Return the numpy dtype of one account record for a window of `window` buckets."""
    return np.dtype(
        [
            ("max_bucket", "<i8"),
            ("updated_at", "<i8"),
            ("flags", "<u4"),
            ("counts", "<u4", (window,)),
        ]
    )


def empty_records(n: int, window: int) -> np.ndarray:
    """Return `n` records of accounts never seen."""
    rec = np.zeros(n, dtype=record_dtype(window))
    rec["max_bucket"] = -1
    rec["updated_at"] = -1
    return rec


_OPEN: dict[str, list] = {}
"""Writable shard databases open in this process: path -> [Rdict, number of stores using it]."""
_OPEN_LOCK = threading.Lock()


class RollingStateStore:
    """The rolling-count state of one shard: batched reads, atomic batched writes.

    Stores of several sources writing the same shard in one process share its database (RocksDB
    lets one writer open it), each under its own record id.

    Records are `record_dtype(window)` rows, or, with `template` (one record of an entity never
    seen), rows of the template's dtype: the record of several features of one source (see
    `streamml.state.feature_records.RecordLayout`).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        feature: int,
        window: int,
        read_only: bool = False,
        tuning: StoreTuning | None = None,
        secondary_dir: str | os.PathLike[str] | None = None,
        template: np.ndarray | None = None,
    ) -> None:
        self.path = Path(path)
        self.feature = feature
        self.window = window
        self._template = template
        self.dtype = record_dtype(window) if template is None else template.dtype
        self._prefix = keys.account_prefix(feature)
        self._caught_up: tuple[tuple[str, int, int], ...] | None = None
        empty = empty_records(1, window) if template is None else template.reshape(-1)[:1]
        self._sparse = SparseCodec(self.dtype, empty)
        self._codecs: dict[tuple[np.dtype, bytes], SparseCodec] = {
            (self.dtype, empty.tobytes()): self._sparse
        }
        tuning = tuning or StoreTuning()
        self._writer = False
        if secondary_dir is not None:
            opts = _options(tuning, create=False)
            opts.set_max_open_files(-1)
            access = AccessType.secondary(str(secondary_dir))
            self._db = open_db(self.path, opts, access)
            self._codec = _reader_codec(self._db)
        elif read_only:
            access = AccessType.read_only(False)
            self._db = open_db(self.path, _options(tuning, create=False), access)
            self._codec = _reader_codec(self._db)
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            self._shared = str(self.path.resolve())
            with _OPEN_LOCK:
                entry = _OPEN.get(self._shared)
                if entry is None:
                    db = open_db(self.path, _options(tuning, create=True))
                    entry = _OPEN[self._shared] = [db, 0, _DbCodec(db, tuning.codec)]
                entry[1] += 1
            self._db = entry[0]
            self._db_codec: _DbCodec = entry[2]
            self._writer = True
            self._write_opts = WriteOptions()
        self._budget = memory_budget(tuning)
        self._budget.watch(self)

    def databases(self) -> list[Rdict]:
        """Return the open database of this store (for its memory budget)."""
        return [self._db]

    @property
    def codec(self) -> str | None:
        """The database's value codec (``sparse`` or ``raw``), None while it holds no records."""
        if self._writer:
            return self._db_codec.codec
        return self._codec

    def _read_codec(self) -> str:
        """Return the codec to decode the values read now with."""
        if self._writer:
            return self._db_codec.codec or "raw"
        if self._codec is None:
            # No key yet: raw, unless a writer has since written its first records (and the key
            # in the same batch) and this instance sees them.
            self._codec = _reader_codec(self._db)
        return self._codec or "raw"

    def _decode(self, out: np.ndarray, raw: list[bytes | None], codec: SparseCodec) -> np.ndarray:
        if self._read_codec() == "sparse":
            return codec.fill(out, raw)
        return fill_records(out, raw)

    def _codec_of(self, template: np.ndarray) -> SparseCodec:
        key = (template.dtype, template.tobytes())
        codec = self._codecs.get(key)
        if codec is None:
            codec = self._codecs[key] = SparseCodec(template.dtype, template)
        return codec

    def close(self) -> None:
        """Close the database (a writable one once every store of this process sharing it did)."""
        shared = getattr(self, "_shared", None)
        if shared is None:
            self._db.close()
            return
        with _OPEN_LOCK:
            entry = _OPEN.get(shared)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] == 0:
                del _OPEN[shared]
                entry[0].close()
        self._shared = None

    def catch_up(self) -> None:
        """Read the writes the primary made since (a store opened with `secondary_dir` only).

        Skipped when the primary's write-ahead logs and manifest are as they were at the last
        catch-up (a directory scan, about 40 us, instead of about 1.5 ms per database): a write
        grows a log, a flush or compaction writes the manifest. The files are looked at before
        catching up, so a write made during it is caught up with next time.
        """
        signature = primary_files(self.path)
        if signature == self._caught_up:
            return
        self._db.try_catch_up_with_primary()
        self._caught_up = signature
        self._budget.tick()

    def key(self, account: bytes) -> bytes:
        """Return the RocksDB key of an account."""
        return self._prefix + account

    def load(self, accounts: list[bytes]) -> np.ndarray:
        """Return the records of `accounts` (one multi-get); unknown accounts get empty records."""
        if self._template is None:
            empty = empty_records(len(accounts), self.window)
        else:
            empty = np.repeat(self._template, len(accounts))
        raw = self._db.get([self._prefix + a for a in accounts])
        return self._decode(empty, raw, self._sparse)

    def load_records(
        self, feature: int, accounts: list[bytes], template: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return the records of `accounts` under record id `feature` (one multi-get).

        `template` is the record of an entity never seen (one row of the records' dtype): the
        records of accounts never written are copies of it. Also returns which were found.
        """
        prefix = keys.account_prefix(feature)
        raw = self._db.get([prefix + a for a in accounts])
        out = np.repeat(template.reshape(-1)[:1], len(accounts))
        found = np.fromiter((v is not None for v in raw), dtype=bool, count=len(raw))
        return self._decode(out, raw, self._codec_of(template.reshape(-1)[:1])), found

    def load_one(self, account: bytes) -> np.void | None:
        """Return the record of one account, or None if it was never written."""
        raw = self._db.get(self._prefix + account)
        if raw is None:
            return None
        if self._read_codec() == "sparse":
            return self._sparse.decode([raw])[0]
        return np.frombuffer(raw, dtype=self.dtype)[0]

    def commit(
        self,
        accounts: list[bytes],
        records: np.ndarray,
        positions: dict[str, int],
        outbox: tuple[str, int, int, bytes] | None = None,
    ) -> None:
        """Write `records` of `accounts` and the applied `positions` in one atomic WriteBatch.

        `outbox` is ``(partition, first position, last position, payload)``: what this batch
        emitted, kept so that a replay after a restart can emit it again.
        """
        wb = WriteBatch(raw_mode=True)
        prefix = self._prefix
        if accounts:
            state = self._db_codec
            if state.codec is None:
                state.codec = state.new_codec
                if state.codec != "raw":
                    wb.put(CODEC_KEY, _CODEC_TAG)
            records = records.astype(self.dtype, copy=False)
            if state.codec == "sparse":
                buf, ends = self._sparse.encode(records)
                start = 0
                for account, end in zip(accounts, ends, strict=True):
                    wb.put(prefix + account, buf[start:end])
                    start = end
            else:
                buf = records.tobytes()
                size = self.dtype.itemsize
                for i, account in enumerate(accounts):
                    wb.put(prefix + account, buf[i * size : (i + 1) * size])
        for partition, position in positions.items():
            wb.put(keys.position_key(partition), int(position).to_bytes(8, "big", signed=True))
        if outbox is not None:
            partition, first, last, payload = outbox
            wb.put(keys.outbox_key(partition, last), first.to_bytes(8, "big") + payload)
        self._db.write(wb, self._write_opts)
        self._budget.tick()

    def outbox(self, partition: str, first: int, last: int) -> list[bytes]:
        """Return the outbox payloads of `partition` holding positions in ``[first, last]``."""
        prefix = keys.outbox_prefix(partition)
        out = []
        for k, v in self._db.items(from_key=keys.outbox_key(partition, max(first, 0))):
            if not k.startswith(prefix) or int.from_bytes(v[:8], "big") > last:
                break
            out.append(v[8:])
        return out

    def prune_outbox(self, partition: str, upto: int) -> None:
        """Delete the outbox entries of `partition` whose positions are all at or below `upto`."""
        if upto >= 0:
            self._db.delete_range(
                keys.outbox_key(partition, 0), keys.outbox_key(partition, upto + 1)
            )

    def applied_position(self, partition: str) -> int:
        """Return the last applied position of `partition`, or -1 if none was applied."""
        raw = self._db.get(keys.position_key(partition))
        return -1 if raw is None else int.from_bytes(raw, "big", signed=True)

    def applied_positions(self) -> dict[str, int]:
        """Return every partition's last applied position."""
        out: dict[str, int] = {}
        start = keys.position_key("")
        for k, v in self._db.items(from_key=start):
            if not k.startswith(start):
                break
            out[keys.decode_position_key(k)] = int.from_bytes(v, "big", signed=True)
        return out

    def iter_records(self, chunk: int = 4096):
        """Yield `(account, record)` for every account in key order (decoded `chunk` at a time)."""
        n = len(self._prefix)
        names: list[bytes] = []
        values: list[bytes] = []
        for k, v in self._db.items(from_key=self._prefix):
            if not k.startswith(self._prefix):
                break
            names.append(k[n:])
            values.append(v)
            if len(values) >= chunk:
                yield from self._decoded(names, values)
                names, values = [], []
        if values:
            yield from self._decoded(names, values)

    def _decoded(self, names: list[bytes], values: list[bytes]):
        if self._read_codec() == "sparse":
            records = self._sparse.decode(values)
        else:
            records = np.frombuffer(b"".join(values), dtype=self.dtype)
        return zip(names, records, strict=True)


class _DbCodec:
    """The value codec of one writable database, shared by the stores that write it.

    `codec` is None while the database holds no account records and has no codec key: the
    first commit of records then sets it to `new_codec` (and writes the key in its batch).
    """

    __slots__ = ("codec", "new_codec")

    def __init__(self, db: Rdict, new_codec: str) -> None:
        self.new_codec = new_codec
        self.codec: str | None = _reader_codec(db)


def _stored_codec(db: Rdict) -> str | None:
    """Return the codec named by a database's codec key, or None if it has none."""
    tag = db.get(CODEC_KEY)
    if tag is None:
        return None
    if tag != _CODEC_TAG:
        raise ValueError(
            f"this state database's values are encoded as {tag!r}, which this version of "
            f"streamml does not know (it reads {_CODEC_TAG!r} and raw records): upgrade streamml"
        )
    return "sparse"


def _reader_codec(db: Rdict) -> str | None:
    """Return the codec a reader of `db` decodes with: None while it holds no records."""
    stored = _stored_codec(db)
    if stored is None and _has_records(db):
        return "raw"
    return stored


def _has_records(db: Rdict) -> bool:
    """Whether a database holds any account record (of any record id)."""
    for k in db.keys(from_key=_ACCOUNTS):
        return k.startswith(_ACCOUNTS)
    return False


def primary_files(path: str | os.PathLike[str]) -> tuple[tuple[str, int, int], ...]:
    """Return the name, size and mtime of a RocksDB primary's logs, manifests and CURRENT.

    They change with every write (a log grows) and every flush or compaction (the manifest), so
    a secondary instance whose primary shows the same files has nothing to catch up with. A file
    the primary deletes between the listing and its stat (a log after a flush) counts as size and
    mtime -1: a change too.
    """
    out = []
    with os.scandir(path) as entries:
        for e in entries:
            name = e.name
            if name.endswith(".log") or name.startswith("MANIFEST") or name == "CURRENT":
                try:
                    st = e.stat()
                except FileNotFoundError:
                    out.append((name, -1, -1))
                    continue
                out.append((name, st.st_size, st.st_mtime_ns))
    return tuple(sorted(out))


def fill_records(out: np.ndarray, raw: list[bytes | None]) -> np.ndarray:
    """Set the records of `out` whose stored bytes `raw` holds (None: left as they are)."""
    found = [i for i, v in enumerate(raw) if v is not None]
    if found:
        joined = b"".join([raw[i] for i in found])  # type: ignore[misc]
        out[np.asarray(found)] = np.frombuffer(joined, dtype=out.dtype)
    return out


def create_shard(path: str | os.PathLike[str]) -> None:
    """Create an empty shard database at `path` (nothing happens if one is there)."""
    RollingStateStore(path, feature=0, window=1).close()


def stored_positions(
    state_dir: str | os.PathLike[str], shards: int, fed_by: Callable[[str], range] | None = None
) -> dict[str, int]:
    """Return, per source partition, the position through which every shard has applied it.

    Each shard records how far it applied each partition (every shard sees every batch, even
    with none of its events), so reading can resume after the smallest of them; a partition that
    some shard has not recorded yet answers -1. With `fed_by` (partition routing: a partition's
    name -> the shards it feeds) only those shards count for a partition. Opens the shards
    read-only, so it works while a flow writes them.
    """
    per_shard = shard_positions(state_dir, shards)
    names = set().union(*per_shard) if per_shard else set()
    if fed_by is None:
        return {n: min(p.get(n, -1) for p in per_shard) for n in names}
    return {n: min(per_shard[s].get(n, -1) for s in fed_by(n)) for n in names}


def shard_positions(state_dir: str | os.PathLike[str], shards: int) -> list[dict[str, int]]:
    """Return, per shard, the position through which it has applied each source partition."""
    from streamml.state.layout import StateLayout

    per_shard: list[dict[str, int]] = []
    for shard in range(shards):
        path = StateLayout.shard_dir(state_dir, shard)
        if not (path / "CURRENT").exists():
            per_shard.append({})
            continue
        store = RollingStateStore(path, feature=0, window=1, read_only=True)
        try:
            per_shard.append(store.applied_positions())
        finally:
            store.close()
    return per_shard
