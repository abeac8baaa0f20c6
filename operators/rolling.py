"""Rolling windowed event counts per account, vectorised over batches, state in RocksDB.

Semantics (per account): bucket = ts // bucket_ms; M = the largest bucket accepted so far. An
event whose bucket is below ``M - window + 1`` is *late*: not counted, reported. Otherwise it is
added to its bucket and the value is the sum of the buckets in ``[M - window + 1, M]``. An alert
fires when the value goes above the threshold while the account is not in alert; the account leaves
alert when, after an accepted event, its value is at or below the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from bytewax import operators as op
from bytewax.dataflow import operator
from bytewax.operators import KeyedStream, StatefulBatchLogic

from operators.records import Alert, EventBatch
from state.layout import StateLayout
from state.rolling_store import ALERT_FLAG, RollingStateStore, StoreTuning

__all__ = ["Advance", "RollingConfig", "ShardUpdate", "advance", "rolling_count"]


@dataclass(frozen=True, slots=True)
class RollingConfig:
    """Settings of the rolling count: where the state lives and the window and alert rules."""

    state_dir: Path
    layout: StateLayout = field(default_factory=StateLayout)
    threshold: int = 2000
    tuning: StoreTuning = field(default_factory=StoreTuning)


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


def _grouped_cummax(groups: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Return the running maximum of `values`, restarting at every group (sorted ascending)."""
    uniq, rank = np.unique(values, return_inverse=True)
    n = np.int64(len(uniq))
    combined = groups.astype(np.int64) * n + rank
    return uniq[np.maximum.accumulate(combined) - groups.astype(np.int64) * n]


def advance(
    records: np.ndarray,
    codes: np.ndarray,
    buckets: np.ndarray,
    ts: np.ndarray,
    *,
    window: int,
    threshold: int,
) -> Advance:
    """Apply events to account records, exactly as if they were applied one by one in order.

    `records` holds one state record per account (see `state.rolling_store.record_dtype`),
    `codes[i]` is the index into `records` of event i's account, `buckets` and `ts` its bucket and
    event time.
    """
    n = len(codes)
    ng = len(records)
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

    cm = _grouped_cummax(g, b)
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
    vals = np.unique(np.concatenate([lower, b[j]]))
    nv = np.int64(len(vals))
    key_lower = g * nv + np.searchsorted(vals, lower)
    key_b = g[j] * nv + np.searchsorted(vals, b[j])
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


@dataclass(frozen=True, slots=True)
class ShardUpdate:
    """The outcome of one batch of events on one shard.

    `accounts`, `ts`, `values` describe every accepted event in source order (the feature value
    after it); `late_*` every late event; `alerts` every crossing; `skipped` events already
    applied before (a replay).
    """

    partition: str
    accounts: pa.Array
    ts: np.ndarray
    values: np.ndarray
    late_accounts: pa.Array
    late_ts: np.ndarray
    late_positions: np.ndarray
    alerts: list[Alert]
    skipped: int

    @property
    def accepted(self) -> int:
        """Number of accepted events."""
        return len(self.ts)

    @property
    def late(self) -> int:
        """Number of late events."""
        return len(self.late_ts)


class _RollingLogic(StatefulBatchLogic[EventBatch, ShardUpdate, None]):
    def __init__(self, config: RollingConfig) -> None:
        self.config = config
        self._store: RollingStateStore | None = None
        self.applied: dict[str, int] = {}

    def _open(self, shard: int) -> RollingStateStore:
        if self._store is None:
            layout = self.config.layout
            self._store = RollingStateStore(
                StateLayout.shard_dir(self.config.state_dir, shard),
                feature=layout.feature_id,
                window=layout.window_buckets,
                tuning=self.config.tuning,
            )
        return self._store

    def _apply(self, batch: EventBatch) -> ShardUpdate:
        layout = self.config.layout
        store = self._open(batch.shard)
        positions = batch.positions
        done = self.applied.get(batch.partition)
        if done is None:
            done = self.applied[batch.partition] = store.applied_position(batch.partition)
        accounts, ts = batch.accounts, batch.ts
        skipped = 0
        if len(positions) and positions[0] <= done:
            fresh = positions > done
            skipped = int(len(positions) - fresh.sum())
            idx = np.flatnonzero(fresh)
            accounts, ts, positions = accounts.take(pa.array(idx)), ts[idx], positions[idx]
        if len(ts) == 0:
            empty = accounts.slice(0, 0)
            return ShardUpdate(batch.partition, empty, ts, ts, empty, ts, ts, [], skipped)
        encoded = accounts.dictionary_encode()
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        uniq = encoded.dictionary.to_pylist()
        records = store.load(uniq)
        result = advance(
            records,
            codes,
            ts // layout.bucket_ms,
            ts,
            window=layout.window_buckets,
            threshold=self.config.threshold,
        )
        last = int(positions[-1])
        store.commit(uniq, result.records, {batch.partition: last})
        self.applied[batch.partition] = last
        acc = result.accepted
        alerts = [
            Alert(
                uniq[codes[i]].decode("utf-8"),
                int(ts[i]),
                int(result.values[i]),
                batch.partition,
                int(positions[i]),
            )
            for i in np.flatnonzero(result.fired).tolist()
        ]
        if acc.all():
            late_idx = np.empty(0, dtype=np.int64)
            acc_accounts, acc_ts, acc_values = accounts, ts, result.values
        else:
            acc_idx = np.flatnonzero(acc)
            late_idx = np.flatnonzero(~acc)
            acc_accounts = accounts.take(pa.array(acc_idx))
            acc_ts, acc_values = ts[acc_idx], result.values[acc_idx]
        return ShardUpdate(
            partition=batch.partition,
            accounts=acc_accounts,
            ts=acc_ts,
            values=acc_values,
            late_accounts=accounts.take(pa.array(late_idx, type=pa.int64())),
            late_ts=ts[late_idx],
            late_positions=positions[late_idx],
            alerts=alerts,
            skipped=skipped,
        )

    def on_batch(self, values: list[EventBatch]) -> tuple[list[ShardUpdate], bool]:
        return [self._apply(b) for b in values], StatefulBatchLogic.RETAIN

    def snapshot(self) -> None:
        return None


@operator
def rolling_count(
    step_id: str,
    up: KeyedStream[EventBatch],
    config: RollingConfig,
) -> KeyedStream[ShardUpdate]:
    """Count events per account over a rolling window, keyed by shard, state in RocksDB.

    `up` carries event batches keyed by shard name (``shard-NNN``, see `operators.shard_events`);
    each shard's state lives in its own RocksDB database under ``config.state_dir``. Emits one
    `ShardUpdate` per batch. Batches whose positions were already applied to a shard (a replay
    after a restart) are skipped, so every event counts exactly once.
    """
    return op.stateful_batch("shards", up, lambda _resume: _RollingLogic(config))
