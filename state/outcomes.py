"""The outcome store and the outcome join's pending state.

The outcome store lies beside the prediction store: ``ROOT/outcomes/date=YYYY-MM-DD/part-*.parquet``
(partitioned by the UTC day of the request time, as the predictions are), one row per scored
variant whose request got an outcome: the prediction (label, probabilities, version, variant,
role) and what was observed (`outcome`, `observed_at`).

`JoinStore` is the join's pending state on RocksDB: one database per shard holding the entries
that wait for their other half, an index of them by expiry time, and the join's clocks. Every
batch of changes is one WriteBatch. With `undo` on, each batch also writes, for every key it is
the first to change in the current epoch, the value the key had before, so a restart can roll
the database back to the epoch the recovery dir resumes from.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from rocksdict import Rdict, WriteBatch, WriteOptions
from streamml.state._parquet import DayPartitionedWriter, read_partitioned
from streamml.state.errors import RefusedError
from streamml.state.rocksdb_options import StoreTuning, _options, memory_budget, open_db

__all__ = [
    "OUTCOMES_DIR",
    "OUTCOME_SCHEMA",
    "JoinStore",
    "LabelledRows",
    "OutcomeRecord",
    "OutcomeWriter",
    "labelled_rows",
    "read_outcomes",
]

OUTCOMES_DIR = "outcomes"
"""Folder of the matched rows under a prediction store's root."""
_TS = pa.timestamp("ms", tz="UTC")
OUTCOME_SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("model", pa.string()),
        ("version", pa.string()),
        ("variant", pa.string()),
        ("role", pa.string()),
        ("account", pa.string()),
        ("request_ts", _TS),
        ("label", pa.string()),
        ("probabilities", pa.list_(pa.float32())),
        ("classes", pa.list_(pa.string())),
        ("metadata_revision", pa.int64()),
        ("outcome", pa.string()),
        ("observed_at", _TS),
        ("correct", pa.bool_()),
        ("pipeline_version", pa.string()),
    ]
)
"""Columns of the outcome store (plus the `date` partition column when read)."""


@dataclass(frozen=True, slots=True)
class OutcomeRecord:
    """One scored variant of a request joined to the request's outcome (times in epoch ms)."""

    request_id: str
    model: str
    version: str
    variant: str
    role: str
    account: str
    request_ts: int
    label: str
    probabilities: Sequence[float]
    classes: Sequence[str]
    metadata_revision: int
    outcome: str
    observed_at: int

    @property
    def correct(self) -> bool:
        """Whether the variant predicted what was observed."""
        return self.label == self.outcome


class OutcomeWriter(DayPartitionedWriter[OutcomeRecord]):
    """Append `OutcomeRecord`s to the outcome store at `root` (one writer per worker)."""

    schema = OUTCOME_SCHEMA
    subdir = OUTCOMES_DIR

    def _day_ms(self, record: OutcomeRecord) -> int:
        return record.request_ts

    def _table(self, records: Sequence[OutcomeRecord]) -> pa.Table:
        cols: dict[str, pa.Array] = {}
        for name in OUTCOME_SCHEMA.names:
            if name in ("probabilities", "classes", "pipeline_version", "correct"):
                continue
            kind = OUTCOME_SCHEMA.field(name).type
            cols[name] = pa.array([getattr(r, name) for r in records], kind)
        cols["probabilities"] = pa.array(
            [list(r.probabilities) for r in records], pa.list_(pa.float32())
        )
        cols["classes"] = pa.array([list(r.classes) for r in records], pa.list_(pa.string()))
        cols["correct"] = pa.array([r.correct for r in records], pa.bool_())
        cols["pipeline_version"] = pa.array([self.pipeline_version] * len(records), pa.string())
        return pa.table({n: cols[n] for n in OUTCOME_SCHEMA.names})


def read_outcomes(root: str | os.PathLike[str]) -> pa.Table:
    """Read the whole outcome store under the prediction store `root`."""
    return read_partitioned(Path(root) / OUTCOMES_DIR, OUTCOME_SCHEMA)


_ENTRY = b"e"
_EXPIRY = b"x"
_UNDO = b"u"
_SEQ = b"m:seq"
_ABSENT = b"\x00"
_PRESENT = b"\x01"
UNDO_EPOCHS_KEPT = 16
"""Epochs whose undo records are kept: how far behind the join state a recovery dir may be."""


def _be64(n: int) -> bytes:
    return max(n, 0).to_bytes(8, "big")


def expiry_key(expires_at: int, key: bytes) -> bytes:
    """Return the index key of an entry that expires at `expires_at` (epoch ms)."""
    return _EXPIRY + _be64(expires_at) + key


class JoinStore:
    """Pending join entries on RocksDB, with an expiry index and per-epoch undo records.

    Keys are bytes. `write` takes dicts of key -> value (None deletes) and writes them in one
    WriteBatch; the databases of a process share the memory budget of `tuning` (see
    `StoreTuning`); entries live under ``e``, index keys under ``x`` + 8-byte expiry time, the
    undo records under ``u`` + 8-byte epoch, metadata under ``m:``.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, undo: bool, tuning: StoreTuning | None = None
    ) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        tuning = tuning or StoreTuning()
        self._db = open_db(self.path, _options(tuning, create=True))
        self._write_opts = WriteOptions()
        self._budget = memory_budget(tuning)
        self._budget.watch(self)
        self.undo = undo
        raw = self._db.get(_SEQ)
        self.seq = int.from_bytes(raw, "big") if raw else 0
        self._touched: set[bytes] = set()
        # Index keys below `_scan_from` were all taken by earlier `due` calls, except those
        # written since, the lowest of which is `_written_low`: scans start there, above the
        # tombstones of the index keys already deleted.
        self._scan_from = 0
        self._written_low: int | None = None

    def get_entries(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """Return the stored entries of `keys` (None where absent), in one multi-get."""
        if not keys:
            return []
        return self._db.get([_ENTRY + k for k in keys])

    def get_meta(self, name: str) -> bytes | None:
        """Return the metadata value `name`, or None."""
        return self._db.get(b"m:" + name.encode())

    def write(
        self,
        entries: dict[bytes, bytes | None],
        index: dict[bytes, bytes | None] | None = None,
        meta: dict[str, bytes] | None = None,
    ) -> None:
        """Write entry, index and metadata changes (None deletes) in one WriteBatch."""
        changes: dict[bytes, bytes | None] = {_ENTRY + k: v for k, v in entries.items()}
        if index:
            changes.update(index)
        if meta:
            changes.update({b"m:" + k.encode(): v for k, v in meta.items()})
        if not changes:
            return
        wb = WriteBatch(raw_mode=True)
        if self.undo:
            first = [k for k in changes if k not in self._touched]
            if first:
                prefix = _UNDO + _be64(self.seq + 1)
                old = self._db.get(first)
                for k, v in zip(first, old, strict=True):
                    wb.put(prefix + k, _ABSENT if v is None else _PRESENT + v)
                self._touched.update(first)
        for k, v in changes.items():
            if v is None:
                wb.delete(k)
            else:
                wb.put(k, v)
                if k[:1] == _EXPIRY:
                    at = int.from_bytes(k[1:9], "big")
                    if self._written_low is None or at < self._written_low:
                        self._written_low = at
        self._db.write(wb, self._write_opts)
        self._budget.tick()

    def databases(self) -> list[Rdict]:
        """Return the open database (for its memory budget)."""
        return [self._db]

    def due(self, before: int, limit: int = 100_000) -> list[tuple[bytes, bytes]]:
        """Return up to `limit` (index key, entry key) pairs expiring before `before`.

        Callers delete the index keys returned; a later call then starts its scan after them.
        """
        start = self._scan_from
        if self._written_low is not None:
            start = min(start, self._written_low)
        if start >= before:
            return []
        out = []
        end = _EXPIRY + _be64(before)
        it = self._db.iter()
        it.seek(_EXPIRY + _be64(start))
        while it.valid() and len(out) < limit:
            k = it.key()
            if k >= end:
                break
            out.append((k, k[len(_EXPIRY) + 8 :]))
            it.next()
        del it
        if len(out) < limit:
            self._scan_from, self._written_low = max(before, 0), None
        return out

    def end_epoch(self) -> int:
        """Close the current epoch: count it and drop undo records too old to need; return it."""
        wb = WriteBatch(raw_mode=True)
        self.seq += 1
        wb.put(_SEQ, _be64(self.seq))
        if self.undo and self.seq > UNDO_EPOCHS_KEPT:
            wb.delete_range(_UNDO, _UNDO + _be64(self.seq - UNDO_EPOCHS_KEPT + 1))
        self._db.write(wb, self._write_opts)
        self._touched.clear()
        return self.seq

    def rollback_to(self, seq: int) -> None:
        """Undo every epoch after `seq` (including the unfinished one); refuse if not kept."""
        if seq > self.seq:
            raise RefusedError(
                f"{self.path}: the recovery dir resumes at join epoch {seq}, but the state "
                f"has only {self.seq}: this state dir is older than its recovery dir"
            )
        if self.seq - seq > UNDO_EPOCHS_KEPT or (not self.undo and self.seq > seq):
            raise RefusedError(
                f"{self.path}: the join state is at epoch {self.seq} and the recovery dir "
                f"resumes at {seq}; only the last {UNDO_EPOCHS_KEPT} epochs can be undone. "
                "Start again with a new state dir and recovery dir."
            )
        for epoch in range(self.seq + 1, seq, -1):
            prefix = _UNDO + _be64(epoch)
            wb = WriteBatch(raw_mode=True)
            for k, v in self._scan(prefix):
                key = k[len(prefix) :]
                if v == _ABSENT:
                    wb.delete(key)
                else:
                    wb.put(key, v[1:])
                wb.delete(k)
            self._db.write(wb, self._write_opts)
        self._scan_from, self._written_low = 0, None
        if seq != self.seq:
            self.seq = seq
            self._db.put(_SEQ, _be64(seq), self._write_opts)
        self._touched.clear()

    def _scan(self, prefix: bytes) -> Iterable[tuple[bytes, bytes]]:
        it = self._db.iter()
        it.seek(prefix)
        while it.valid():
            k = it.key()
            if not k.startswith(prefix):
                break
            yield k, it.value()
            it.next()

    def iter_entries(self) -> Iterable[tuple[bytes, bytes]]:
        """Yield every (key, entry) pending, in key order."""
        for k, v in self._scan(_ENTRY):
            yield k[len(_ENTRY) :], v

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    @staticmethod
    def destroy(path: str | os.PathLike[str]) -> None:
        """Delete a join store's files."""
        shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class LabelledRows:
    """Scored requests with their outcome, as a training matrix (see `labelled_rows`)."""

    X: np.ndarray
    y: np.ndarray
    request_ts: np.ndarray
    request_ids: list[str]
    logged_labels: np.ndarray
    feature_names: tuple[str, ...]
    feature_versions: dict[str, list[str]]
    dropped_incomplete: int

    def fingerprint(self) -> str:
        """Return the sha256 of the rows (features, labels and request ids, in order)."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.X, dtype=np.float64).tobytes())
        h.update("\x00".join(self.y.tolist()).encode())
        h.update("\x00".join(self.request_ids).encode())
        return h.hexdigest()


def labelled_rows(
    root: str | os.PathLike[str],
    model: str,
    feature_names: Sequence[str],
    *,
    since: int | None = None,
    until: int | None = None,
    role: str = "answer",
) -> LabelledRows:
    """Return the answered requests of `model` that got an outcome, in request-time order.

    Each row is the request's features as the model scored them (the prediction store's logged
    values, whatever their source: request context, online store, on-demand service or default),
    in `feature_names` order, labelled with the outcome from the outcome store; `since` and
    `until` (epoch ms) bound the request time, `[since, until)`. Rows lacking a value for one of
    the features are dropped and counted.
    """
    from streamml.state.predictions import read_predictions

    names = tuple(feature_names)
    preds = read_predictions(root).select(
        ["request_id", "model", "variant", "role", "request_ts", "label", "features"]
    )
    ts = preds.column("request_ts").cast(pa.int64())
    keep = pc.and_(pc.equal(preds.column("model"), model), pc.equal(preds.column("role"), role))
    if since is not None:
        keep = pc.and_(keep, pc.greater_equal(ts, since))
    if until is not None:
        keep = pc.and_(keep, pc.less(ts, until))
    preds = preds.filter(keep)
    outcomes = read_outcomes(root).select(["request_id", "variant", "outcome"])
    features = preds.column("features")
    keys = preds.drop_columns(["features"]).append_column(
        "row", pa.array(np.arange(preds.num_rows, dtype=np.int64))
    )
    joined = keys.join(outcomes, keys=["request_id", "variant"], join_type="inner")
    joined = joined.sort_by([("request_ts", "ascending"), ("request_id", "ascending")])
    n = joined.num_rows
    X = np.full((n, len(names)), np.nan)
    versions: dict[str, set[str]] = {name: set() for name in names}
    feats = features.take(joined.column("row")).combine_chunks()
    if n and len(feats.values):
        parents = pc.list_parent_indices(feats).to_numpy()
        flat = feats.values
        fnames = np.asarray(flat.field("name").to_pylist(), dtype=object)
        values = flat.field("value").to_numpy(zero_copy_only=False)
        fversions = np.asarray(flat.field("version").to_pylist(), dtype=object)
        for j, name in enumerate(names):
            sel = fnames == name
            X[parents[sel], j] = values[sel]
            versions[name].update(v for v in fversions[sel].tolist() if v)
    complete = ~np.isnan(X).any(axis=1)
    rows = joined.filter(pa.array(complete))
    return LabelledRows(
        X=X[complete],
        y=np.asarray(rows.column("outcome").to_pylist(), dtype=object),
        request_ts=rows.column("request_ts").cast(pa.int64()).to_numpy(),
        request_ids=rows.column("request_id").to_pylist(),
        logged_labels=np.asarray(rows.column("label").to_pylist(), dtype=object),
        feature_names=names,
        feature_versions={k: sorted(v) for k, v in versions.items()},
        dropped_incomplete=int((~complete).sum()),
    )
