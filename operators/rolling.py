"""Rolling windowed features per account, vectorised over batches, state in RocksDB.

Semantics of the count (per account): bucket = ts // bucket_ms; M = the largest bucket accepted so
far. An event whose bucket is below ``M - window + 1`` is *late*: not counted, reported. Otherwise
it is added to its bucket and the value is the sum of the buckets in ``[M - window + 1, M]``. An
alert fires when the value goes above the threshold while the account is not in alert; the account
leaves alert when, after an accepted event, its value is at or below the threshold.

`rolling_count` applies every feature of one source (`RollingConfig.features`: counts, sums,
means, minima, maxima, last values, each with its own window, see
`streamml.operators.aggregations`) to one state record per account; `advance` is the count's own
kernel, which the one-count record reproduces byte for byte.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from bytewax import operators as op
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream, StatefulBatchLogic
from streamml.operators.aggregations import advance_features
from streamml.operators.records import Alert, EventBatch
from streamml.operators.recovery_state import first_start, kept_snapshot_positions
from streamml.state.definitions import FeatureDef, count_feature
from streamml.state.feature_records import RecordLayout
from streamml.state.layout import StateLayout
from streamml.state.rolling_store import ALERT_FLAG, RollingStateStore, StoreTuning

__all__ = [
    "KIND_ACCEPTED",
    "KIND_ALERT",
    "KIND_LATE",
    "Advance",
    "RollingConfig",
    "ShardUpdate",
    "advance",
    "rolling_count",
    "row_schema",
]


@dataclass(frozen=True, slots=True)
class RollingConfig:
    """Settings of the rolling count: where the state lives and the window and alert rules.

    With a `recovery_dir`, each batch keeps in the state the rows a replay must emit again: alert
    rows always, accepted rows when `replay_accepted` (a history store consumes them) and late
    rows when `replay_late` (a late-event output consumes them). `source_step` is the full step
    id of the flow's source (``flow.step``), whose snapshots in the recovery dir tell which kept
    rows no restart can need any more.

    `features` are the features of one source kept in one record per account; without them, the
    count of the layout's feature over its bucket and window, alerting above `threshold`.
    `source_id` numbers the source's records in the shard databases (default: the layout's
    feature id). When a feature is kept in PostgreSQL (``online`` holds ``postgres``), each
    batch's records are upserted there (namespace: the source's name) before the RocksDB write,
    with the applied position in the same transaction: PostgreSQL is never behind RocksDB, and a
    replay writes the same records again.
    """

    state_dir: Path
    layout: StateLayout = field(default_factory=StateLayout)
    threshold: int = 2000
    tuning: StoreTuning = field(default_factory=StoreTuning)
    recovery_dir: Path | None = None
    source_step: str = ""
    replay_accepted: bool = True
    replay_late: bool = True
    features: tuple[FeatureDef, ...] = ()
    source_id: int | None = None
    postgres_dsn: str | None = None

    @property
    def recovery(self) -> bool:
        """Whether the flow runs with a Bytewax recovery dir."""
        return self.recovery_dir is not None

    @property
    def definitions(self) -> tuple[FeatureDef, ...]:
        """The features this step computes."""
        if self.features:
            return self.features
        layout = self.layout
        return (
            count_feature(layout.feature, layout.bucket_ms, layout.window_buckets, self.threshold),
        )

    @property
    def record_id(self) -> int:
        """The id of this source's records in the shard databases."""
        return self.layout.feature_id if self.source_id is None else self.source_id


@dataclass(frozen=True, slots=True)
class Advance:
    """What one batch did to the accounts it touched.

    Per event (in the order given): `accepted`, the `values` after each accepted event (undefined
    for late ones) and `fired` (an alert fired on it). Per account: the new `records`.
    """

    accepted: np.ndarray
    values: np.ndarray
    fired: np.ndarray
    records: np.ndarray


def _dense(values: np.ndarray, groups: int) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Map `values` to order-keeping ranks in ``[0, span)``, with ``groups * span`` < 2**62.

    Returns ``(ranks, table, span)``: ``table[rank]`` is the value (None when ranks are offsets
    from the minimum, the cheap case of values within a narrow range).
    """
    if not len(values):
        return values, None, 1
    lo = int(values.min())
    span = int(values.max()) - lo + 1
    if span * max(groups, 1) < (1 << 62):
        return values - lo, None, span
    table, ranks = np.unique(values, return_inverse=True)
    return ranks, table, len(table)


def _grouped_cummax(groups: np.ndarray, values: np.ndarray, ngroups: int) -> np.ndarray:
    """Return the running maximum of `values`, restarting at every group (sorted ascending)."""
    ranks, table, span = _dense(values, ngroups)
    base = groups * np.int64(span)
    cm = np.maximum.accumulate(base + ranks) - base
    return cm + int(values.min()) if table is None else table[cm]


def advance(
    records: np.ndarray,
    codes: np.ndarray,
    buckets: np.ndarray,
    ts: np.ndarray,
    *,
    window: int,
    threshold: int,
    order: np.ndarray | None = None,
) -> Advance:
    """Apply events to account records, exactly as if they were applied one by one in order.

    `records` holds one state record per account (see `streamml.state.rolling_store.record_dtype`),
    `codes[i]` is the index into `records` of event i's account, `buckets` and `ts` its bucket and
    event time. `order`, when given, is ``np.argsort(codes, kind="stable")``.
    """
    n = len(codes)
    ng = len(records)
    if order is None:
        order = np.argsort(codes, kind="stable")
    g = codes[order].astype(np.int64)
    b = buckets[order].astype(np.int64)
    t = ts[order].astype(np.int64)
    m0 = records["max_bucket"].astype(np.int64)
    counts0 = records["counts"].astype(np.int64)
    alert0 = (records["flags"] & ALERT_FLAG).astype(bool)

    first = np.ones(n, dtype=bool)
    first[1:] = g[1:] != g[:-1]
    last = np.ones(n, dtype=bool)
    last[:-1] = first[1:]

    cm = _grouped_cummax(g, b, ng)
    before = np.empty(n, dtype=np.int64)
    before[1:] = cm[:-1]
    before[first] = -1
    m_before = np.maximum(before, m0[g])
    late = b < m_before - (window - 1)
    acc = ~late
    m_after = np.maximum(m_before, np.where(acc, b, m_before))
    lower = m_after - (window - 1)

    # Stored buckets still inside each event's window.
    prefix = np.cumsum(counts0, axis=1)
    d = m_after - m0[g]
    inside = d <= window - 1
    stored = np.zeros(n, dtype=np.int64)
    stored[inside] = prefix[g[inside], (window - 1 - d[inside])]

    # Accepted events of this batch still inside each later event's window: event j counts for
    # events j..exit_j-1 of its account, exit_j being the first whose window starts after b_j.
    j = np.flatnonzero(acc)
    ranks, _table, span = _dense(np.concatenate([lower, b[j]]), ng)
    key_lower = g * np.int64(span) + ranks[:n]
    key_b = g[j] * np.int64(span) + ranks[n:]
    exits = np.searchsorted(key_lower, key_b, side="right")
    delta = np.zeros(n + 1, dtype=np.int64)
    delta[j] += 1
    delta -= np.bincount(exits, minlength=n + 1)
    batch_in_window = np.cumsum(delta[:n])
    values = stored + batch_in_window

    # Alert state machine over accepted events.
    above = values[j] > threshold
    ga = g[j]
    prev = np.empty(len(j), dtype=bool)
    if len(j):
        prev[1:] = above[:-1]
        new_group = np.ones(len(j), dtype=bool)
        new_group[1:] = ga[1:] != ga[:-1]
        prev[new_group] = alert0[ga[new_group]]
    fired_sorted = np.zeros(n, dtype=bool)
    fired_sorted[j] = above & ~prev

    # New records.
    out = records.copy()
    m_final = m0.copy()
    m_final[g[last]] = m_after[last]
    new_alert = alert0.copy()
    if len(j):
        last_acc = np.ones(len(j), dtype=bool)
        last_acc[:-1] = ga[1:] != ga[:-1]
        new_alert[ga[last_acc]] = above[last_acc]
    shift = m_final - m0
    k_old = shift[:, None] + np.arange(window)[None, :]
    keep_old = (k_old < window) & (counts0 > 0)
    rows = np.broadcast_to(np.arange(ng)[:, None], (ng, window))
    flat_old = rows[keep_old] * window + k_old[keep_old]
    k_new = m_final[g[j]] - b[j]
    keep_new = k_new < window
    flat_new = g[j][keep_new] * window + k_new[keep_new]
    new_counts = np.bincount(
        np.concatenate([flat_old, flat_new]),
        weights=np.concatenate([counts0[keep_old], np.ones(int(keep_new.sum()))]),
        minlength=ng * window,
    ).reshape(ng, window)
    upd = np.full(ng, -1, dtype=np.int64)
    np.maximum.at(upd, g[j], t[j])
    out["max_bucket"] = m_final
    out["counts"] = new_counts.astype(np.uint32)
    out["updated_at"] = np.maximum(records["updated_at"], upd)
    out["flags"] = (records["flags"] & ~np.uint32(ALERT_FLAG)) | new_alert.astype(np.uint32)

    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = np.arange(n)
    return Advance(
        accepted=acc[inverse],
        values=values[inverse],
        fired=fired_sorted[inverse],
        records=out,
    )


def row_schema(features: tuple[FeatureDef, ...]) -> pa.Schema:
    """Return the schema of the rows a batch emits for `features`.

    One row per applied event: its source position, account, event time, kind, the features whose
    alert fired on it (bit i for feature i), per feature its value after the event (NaN where the
    event was late for that feature; the column's metadata names the field it aggregates), then
    the value of every aggregated field (``field:NAME``).
    """
    fields = dict.fromkeys(f.field for f in features if f.field is not None)
    return pa.schema(
        [
            ("position", pa.int64()),
            ("account", pa.binary()),
            ("ts", pa.int64()),
            ("kind", pa.int8()),
            ("fired", pa.uint32()),
            *[pa.field(f.name, pa.float64(), metadata={"field": f.field or ""}) for f in features],
            *[(f"field:{name}", pa.float64()) for name in fields],
        ]
    )


KIND_ACCEPTED = 0
KIND_ALERT = 1
KIND_LATE = 2


@dataclass(frozen=True, slots=True)
class ShardUpdate:
    """The outcome of one batch of events on one shard.

    `rows` holds every applied event in source order (see `row_schema`): accepted ones (by at
    least one feature) with the feature values after them (kind `KIND_ALERT` when an alert fired
    on it) and late ones (late for every feature).
    `skipped` counts events that were already applied before (a replay); `replayed` counts rows
    emitted again from the outbox for them after a restart with recovery: they come first in
    `rows` and are not counted again by `counts`. `crossed` is 1 when the batch was split by
    shard in another process than the one that applied it (it crossed processes), with
    `crossed_events` events.
    """

    partition: str
    rows: pa.RecordBatch
    skipped: int = 0
    replayed: int = 0
    counts_features: tuple[str, ...] = ()
    crossed: int = 0
    crossed_events: int = 0

    def _kind(self) -> np.ndarray:
        return self.rows.column("kind").to_numpy()

    def counts(self) -> dict[str, int]:
        """Count the accepted and late events and the alerts applied now (not the replayed)."""
        kind = self._kind()[self.replayed :]
        late = int(np.count_nonzero(kind == KIND_LATE))
        alerts = int(np.count_nonzero(kind == KIND_ALERT))
        return {"accepted": len(kind) - late, "late": late, "alerts": alerts}

    def accepted_rows(self) -> pa.RecordBatch:
        """Return the rows of accepted events."""
        late = pc.equal(self.rows.column("kind"), KIND_LATE)
        return self.rows.filter(pc.invert(late)) if pc.any(late).as_py() else self.rows

    def late_rows(self) -> pa.RecordBatch:
        """Return the rows of late events."""
        return self.rows.filter(pc.equal(self.rows.column("kind"), KIND_LATE))

    @property
    def features(self) -> tuple[str, ...]:
        """Names of the features in `rows`, in feature order."""
        return tuple(n for n in self.rows.schema.names[5:] if not n.startswith("field:"))

    def feature_rows(
        self, feature: str
    ) -> tuple[pa.Array, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Return `(accounts, ts, values, contributions, positions)` of events `feature` accepted.

        In source order; an event's contribution is what it adds to the feature's window: 1 for
        a count, else the value of the field the feature aggregates.
        """
        values = self.rows.column(feature).to_numpy(zero_copy_only=False)
        field = (self.rows.schema.field(feature).metadata or {}).get(b"field", b"").decode()
        if field:
            contributions = self.rows.column(f"field:{field}").to_numpy(zero_copy_only=False)
        else:
            contributions = np.ones(len(values))
        keep = ~np.isnan(values)
        ts = self.rows.column("ts").to_numpy()
        positions = self.rows.column("position").to_numpy()
        if keep.all():
            return self.rows.column("account"), ts, values, contributions, positions
        idx = pa.array(np.flatnonzero(keep))
        return (
            self.rows.column("account").take(idx),
            ts[keep],
            values[keep],
            contributions[keep],
            positions[keep],
        )

    @property
    def alerts(self) -> list[Alert]:
        """Return the alerts fired in this batch, in source order (then feature order)."""
        idx = np.flatnonzero(self._kind() == KIND_ALERT)
        if not len(idx):
            return []
        rows = self.rows.take(pa.array(idx))
        fired = rows.column("fired").to_numpy()
        names = self.features
        columns = {n: rows.column(n).to_numpy(zero_copy_only=False) for n in names}
        out = []
        for r, (p, a, t) in enumerate(
            zip(
                rows.column("position").to_pylist(),
                rows.column("account").to_pylist(),
                rows.column("ts").to_pylist(),
                strict=True,
            )
        ):
            for i, name in enumerate(names):
                if fired[r] >> i & 1:
                    v = float(columns[name][r])
                    value = int(v) if name in self.counts_features else v
                    out.append(Alert(a.decode("utf-8"), t, value, self.partition, p, name))
        return out


def _rows(
    schema: pa.Schema, positions, accounts, ts, kind, fired, values, fields
) -> pa.RecordBatch:
    return pa.record_batch(
        [
            pa.array(positions, type=pa.int64()),
            accounts,
            pa.array(ts, type=pa.int64()),
            pa.array(kind, type=pa.int8()),
            pa.array(fired, type=pa.uint32()),
            *[pa.array(v, type=pa.float64()) for v in values],
            *[pa.array(v, type=pa.float64()) for v in fields],
        ],
        schema=schema,
    )


def _sorted_dictionary(accounts: pa.DictionaryArray) -> tuple[pa.Array, np.ndarray]:
    """Return the batch's distinct accounts in byte order, and each event's index into them.

    The shard's reads and writes then go in key order: RocksDB's multi-get sorts its keys
    anyway, and a memtable inserts keys in increasing order faster (each insert starts its
    skiplist search where the previous one ended).
    """
    dictionary = accounts.dictionary
    codes = accounts.indices.to_numpy(zero_copy_only=False)
    perm = pc.sort_indices(dictionary).to_numpy()
    if len(perm) < 2 or np.all(perm[1:] > perm[:-1]):
        return dictionary, codes
    rank = np.empty(len(perm), dtype=np.int64)
    rank[perm] = np.arange(len(perm))
    return dictionary.take(pa.array(perm)), rank[codes]


def _empty_rows(schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=schema)


class _RollingLogic(StatefulBatchLogic[EventBatch, ShardUpdate, dict[str, int]]):
    def __init__(self, config: RollingConfig, resume: dict[str, int] | None) -> None:
        self.config = config
        self.features = config.definitions
        self.record = RecordLayout(self.features)
        self.schema = row_schema(self.features)
        self.empty_rows = _empty_rows(self.schema)
        self.counts = tuple(f.name for f in self.features if f.aggregation == "count")
        self.fields = tuple(dict.fromkeys(f.field for f in self.features if f.field))
        self._store: RollingStateStore | None = None
        self._postgres = None
        self.in_postgres = any("postgres" in f.online for f in self.features)
        if self.in_postgres and not config.postgres_dsn:
            names = [f.name for f in self.features if "postgres" in f.online]
            raise ValueError(
                f"features {', '.join(names)} are kept in PostgreSQL: give the flow a DSN "
                "(--postgres-dsn or STREAMML_POSTGRES_DSN)"
            )
        self._shard = -1
        self._pid = os.getpid()
        self.applied: dict[str, int] = {}
        self.emitted: dict[str, int] = {}
        self.resume = dict(resume or {})
        self.floors: dict[str, int] = {}
        self.last_prune = 0.0
        self.snapshots: deque[dict[str, int]] = deque()

    def _open(self, shard: int) -> RollingStateStore:
        if self._store is None:
            layout = self.config.layout
            self._shard = shard
            self._store = RollingStateStore(
                StateLayout.shard_dir(self.config.state_dir, shard),
                feature=self.config.record_id,
                window=layout.window_buckets,
                tuning=self.config.tuning,
                template=self.record.empty(1),
            )
        return self._store

    def _floor(self, store: RollingStateStore, partition: str) -> int:
        """Return the position up to which this shard's outputs survived the restart.

        Rows of positions after it were emitted and then cut from the outputs (or never reached
        them), so a replay emits them again. It is the position the shard's outputs were
        complete through at the resumed snapshot (see `_mark_emitted`), or, for a partition the
        snapshot does not know, the applied position when this shard first saw the partition
        with this recovery dir (recorded before anything is applied).
        """
        floor = self.floors.get(partition)
        if floor is None:
            if partition in self.resume:
                floor = self.resume[partition]
            else:
                floor = first_start(
                    self.config.recovery_dir,
                    f"shard:{self._shard}:{partition}",
                    store.applied_position(partition),
                )
            self.floors[partition] = floor
        return floor

    def _replay(
        self, store: RollingStateStore, partition: str, skipped: np.ndarray
    ) -> pa.RecordBatch:
        """Rows emitted before a restart for `skipped` positions after the resumed snapshot."""
        skipped = skipped[skipped > self._floor(store, partition)]
        if not len(skipped):
            return self.empty_rows
        lo, hi = int(skipped[0]), int(skipped[-1])
        batches = [
            pa.ipc.read_record_batch(pa.py_buffer(blob), self.schema)
            for blob in store.outbox(partition, lo, hi)
        ]
        table = pa.Table.from_batches(batches, schema=self.schema)
        if not table.num_rows:
            return self.empty_rows
        rows = table.combine_chunks().to_batches()[0]
        pos = rows.column("position").to_numpy()
        return rows.filter(pa.array(np.isin(pos, skipped)))

    def _apply(self, batch: EventBatch) -> ShardUpdate:
        store = self._open(batch.shard)
        partition = batch.partition
        positions = batch.positions
        done = self.applied.get(partition)
        if done is None:
            done = self.applied[partition] = store.applied_position(partition)
            if self.config.recovery:
                self._floor(store, partition)
        accounts, ts = batch.accounts, batch.ts
        fields = {k: batch.fields[k] for k in self.fields}
        skipped = 0
        replayed = None
        if len(positions) and positions[0] <= done:
            fresh = positions > done
            skipped = int(len(positions) - fresh.sum())
            if self.config.recovery:
                replayed = self._replay(store, partition, positions[~fresh])
            idx = np.flatnonzero(fresh)
            accounts, ts, positions = accounts.take(pa.array(idx)), ts[idx], positions[idx]
            fields = {k: v[idx] for k, v in fields.items()}
        parts = [] if replayed is None or not replayed.num_rows else [replayed]
        through = max(done, batch.through, int(positions[-1]) if len(positions) else -1)
        if len(ts):
            if not pa.types.is_dictionary(accounts.type):
                accounts = accounts.dictionary_encode()
            dictionary, codes = _sorted_dictionary(accounts)
            accounts = accounts.dictionary.take(accounts.indices)
            order = np.argsort(codes, kind="stable")
            uniq = dictionary.to_pylist()
            records = store.load(uniq)
            result = advance_features(self.record, records, codes, ts, fields, order=order)
            accepted = np.zeros(len(ts), dtype=bool)
            fired = np.zeros(len(ts), dtype=np.uint32)
            for i, f in enumerate(self.features):
                accepted |= result.accepted[f.name]
                fired |= result.fired[f.name].astype(np.uint32) << np.uint32(i)
            kind = np.where(accepted, np.where(fired != 0, KIND_ALERT, KIND_ACCEPTED), KIND_LATE)
            values = [result.values[f.name] for f in self.features]
            columns = [fields[name] for name in self.fields]
            rows = _rows(self.schema, positions, accounts, ts, kind, fired, values, columns)
            first = int(positions[0])
            outbox = None
            if self.config.recovery:
                kept = self._outbox_rows(rows, kind)
                if kept.num_rows:
                    payload = kept.serialize().to_pybytes()
                    outbox = (partition, first, int(positions[-1]), payload)
            if self.in_postgres:
                self._commit_postgres(uniq, result.records, partition, through)
            store.commit(uniq, result.records, {partition: through}, outbox)
            parts.append(rows)
        elif through > done:
            store.commit([], self.record.empty(0), {partition: through})
        self.applied[partition] = through
        self._mark_emitted(partition, batch)
        n_replayed = 0 if replayed is None else replayed.num_rows
        if not parts:
            rows = self.empty_rows
        elif len(parts) == 1:
            rows = parts[0]
        else:
            rows = pa.Table.from_batches(parts).combine_chunks().to_batches()[0]
        crossed = int(batch.origin not in (0, self._pid))
        return ShardUpdate(
            partition,
            rows,
            skipped,
            n_replayed,
            self.counts,
            crossed,
            crossed * len(batch.positions),
        )

    def _commit_postgres(
        self, accounts: list[bytes], records: np.ndarray, partition: str, through: int
    ) -> None:
        """Upsert the batch's records into PostgreSQL (one statement, one transaction)."""
        if self._postgres is None:
            from streamml.state.postgres import PostgresStore

            assert self.config.postgres_dsn is not None
            self._postgres = PostgresStore(self.config.postgres_dsn, self.features[0].source.name)
        raw = records.tobytes()
        size = records.dtype.itemsize
        self._postgres.commit(
            accounts,
            [raw[i * size : (i + 1) * size] for i in range(len(accounts))],
            records["updated_at"],
            ",".join(f"{f.name}@{f.version}" for f in self.features),
            {f"{partition}#shard-{self._shard:03d}": through},
        )

    def _mark_emitted(self, partition: str, batch: EventBatch) -> None:
        """Record that this shard's outputs of `partition` are complete through `batch`.

        Every position of the batch was emitted now, emitted again from the outbox, or is at or
        below the floor (its rows survived in the outputs). The position applied in RocksDB can
        be further ahead, when an earlier run applied more before it was killed: those rows are
        not in the outputs of this run, so a snapshot must not claim them, or a restart from it
        would skip them without emitting them again.
        """
        start = self.emitted.get(partition)
        if start is None:
            start = self.resume.get(partition, self.floors.get(partition, -1))
        last = int(batch.positions[-1]) if len(batch.positions) else -1
        self.emitted[partition] = max(start, batch.through, last)

    def _outbox_rows(self, rows: pa.RecordBatch, kind: np.ndarray) -> pa.RecordBatch:
        """Return the rows a replay has to emit again."""
        if self.config.replay_accepted and self.config.replay_late:
            return rows
        keep = kind == KIND_ALERT
        if self.config.replay_accepted:
            keep |= kind == KIND_ACCEPTED
        if self.config.replay_late:
            keep |= kind == KIND_LATE
        return rows.filter(pa.array(keep))

    def on_batch(self, values: list[EventBatch]) -> tuple[list[ShardUpdate], bool]:
        return [self._apply(b) for b in values], StatefulBatchLogic.RETAIN

    def snapshot(self) -> dict[str, int]:
        state = {**self.resume, **self.emitted}
        if self.config.recovery and self._store is not None:
            self.snapshots.append(state)
            if len(self.snapshots) > 2:
                self._prune(self.snapshots.popleft())
        return state

    def _prune(self, older: dict[str, int]) -> None:
        """Drop outbox entries that no restart can replay any more.

        A restart replays each source partition from the position Bytewax snapshotted for it
        at the epoch it resumes from. The oldest source snapshot still kept in the recovery dir
        is at or before that, and so is this shard's state two snapshots ago; entries wholly
        before both are never needed again. Without a visible source snapshot nothing is pruned
        past the older bound.
        """
        now = time.monotonic()
        if now - self.last_prune < _PRUNE_INTERVAL_S or self._store is None:
            return
        self.last_prune = now
        assert self.config.recovery_dir is not None
        committed = kept_snapshot_positions(self.config.recovery_dir, self.config.source_step)
        for partition, position in older.items():
            kept = committed.get(partition)
            upto = position if kept is None else min(position, kept - 1)
            self._store.prune_outbox(partition, upto)


_PRUNE_INTERVAL_S = 1.0


@operator
def rolling_count(
    step_id: str,
    up: KeyedStream[EventBatch],
    config: RollingConfig,
) -> KeyedStream[ShardUpdate]:
    """Count events per account over a rolling window, keyed by shard, state in RocksDB.

    `up` carries event batches keyed by shard name (``shard-NNN``, see
    `streamml.operators.shard_events`); each shard's state lives in its own RocksDB database
    under ``config.state_dir``. Emits one `ShardUpdate` per batch. Batches whose positions were
    already applied to a shard (a replay after a restart) are skipped, so every event counts
    exactly once.
    """
    return op.stateful_batch("shards", up, lambda resume: _RollingLogic(config, resume))
