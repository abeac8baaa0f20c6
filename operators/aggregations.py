"""Windowed aggregations of several features per entity, applied to batches in one pass.

Every feature of one source lives in one state record per entity (see `RecordLayout`), so a batch
costs one read and one write per entity whatever the number of features. The semantics generalise
the rolling count (`streamml.operators.rolling`) to each feature's own bucket and window:

- bucket = ts // bucket_ms. M = the largest bucket of the entity's events so far (per bucket
  length; the event that raises M is always accepted).
- An event whose bucket is below ``M - window + 1`` is *late for that feature*: not aggregated
  there. Otherwise it joins its bucket, and the feature's value is its aggregation over the
  buckets in ``[M - window + 1, M]``: `count`, `sum` and `mean` of a field, `min`, `max`, and
  `last` (the field of the event with the largest event time, the later arrival on ties).
- An alert rule fires when the value goes above its threshold while the feature is not in alert;
  the feature leaves alert when, after an event it accepted, its value is at or below it.
- A read as of T aggregates the buckets in ``[T // bucket_ms - window + 1, T // bucket_ms]``.

Sums are kept exactly, in fixed point (`streamml.state.feature_records.SUM_SCALE`), so a value
never depends on how events were split into batches; `mean` is the exact sum divided by the count.
Every step is vectorised over the batch: no Python runs per event. The record format and reads as
of a time live in `streamml.state.feature_records`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from streamml.state.definitions import FeatureDef
from streamml.state.feature_records import SUM_SCALE, RecordLayout

__all__ = ["FeaturesAdvance", "advance_features"]


@dataclass(frozen=True, slots=True)
class FeaturesAdvance:
    """What one batch did: per feature and event (in the order given), and the new records.

    `accepted[name]` says whether the event was aggregated by the feature, `values[name]` the
    feature's value after it (NaN where not accepted) and `fired[name]` whether the feature's
    alert fired on it.
    """

    accepted: dict[str, np.ndarray]
    values: dict[str, np.ndarray]
    fired: dict[str, np.ndarray]
    records: np.ndarray


def _dense(values: np.ndarray, groups: int) -> tuple[np.ndarray, int]:
    """Map `values` to order-keeping ranks in ``[0, span)`` with ``groups * span`` < 2**62."""
    if not len(values):
        return values.astype(np.int64), 1
    lo = int(values.min())
    span = int(values.max()) - lo + 1
    if span * max(groups, 1) < (1 << 62):
        return values.astype(np.int64) - lo, span
    table, ranks = np.unique(values, return_inverse=True)
    return ranks.astype(np.int64), len(table)


def _grouped_cummax(groups: np.ndarray, values: np.ndarray, ngroups: int) -> np.ndarray:
    """Return the running maximum of integer `values`, restarting at every group."""
    ranks, span = _dense(values, ngroups)
    base = groups * np.int64(span)
    cm = np.maximum.accumulate(base + ranks) - base
    lo = int(values.min()) if len(values) else 0
    if span * max(ngroups, 1) < (1 << 62):
        return cm + lo
    return np.unique(values)[cm]


def _interval_max(starts: np.ndarray, ends: np.ndarray, keys: np.ndarray, n: int, fill):
    """Return, for each position i < n, the max of `keys[j]` over ``starts[j] <= i < ends[j]``.

    Positions no interval covers get `fill`. Each interval is written as two overlapping
    power-of-two blocks of a sparse table, which is then pushed down level by level.
    """
    out_dtype = keys.dtype
    if not len(starts):
        return np.full(n, fill, dtype=out_dtype)
    lengths = ends - starts
    level = np.floor(np.log2(lengths)).astype(np.int64)
    levels = int(level.max()) + 1
    table = np.full(levels * n, fill, dtype=out_dtype)
    np.maximum.at(table, level * n + starts, keys)
    np.maximum.at(table, level * n + ends - (np.int64(1) << level), keys)
    table = table.reshape(levels, n)
    for lev in range(levels - 1, 0, -1):
        half = 1 << (lev - 1)
        np.maximum(table[lev - 1], table[lev], out=table[lev - 1])
        np.maximum(table[lev - 1, half:], table[lev, : n - half], out=table[lev - 1, half:])
    return table[0]


def _alerts(
    values: np.ndarray,
    acc: np.ndarray,
    g: np.ndarray,
    alert0: np.ndarray,
    threshold: float,
    ng: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Run the alert state machine over accepted events (sorted by entity).

    Returns the per-event fired flags and the per-entity alert state after the batch.
    """
    n = len(values)
    j = np.flatnonzero(acc)
    above = values[j] > threshold
    ga = g[j]
    fired = np.zeros(n, dtype=bool)
    state = alert0.copy()
    if len(j):
        prev = np.empty(len(j), dtype=bool)
        prev[1:] = above[:-1]
        new_group = np.ones(len(j), dtype=bool)
        new_group[1:] = ga[1:] != ga[:-1]
        prev[new_group] = alert0[ga[new_group]]
        fired[j] = above & ~prev
        last = np.ones(len(j), dtype=bool)
        last[:-1] = new_group[1:]
        state[ga[last]] = above[last]
    return fired, state


def advance_features(
    layout: RecordLayout,
    records: np.ndarray,
    codes: np.ndarray,
    ts: np.ndarray,
    fields: Mapping[str, np.ndarray],
    *,
    order: np.ndarray | None = None,
) -> FeaturesAdvance:
    """Apply events to entity records, exactly as if applied one by one in the order given.

    `records` holds one record per entity (`layout.dtype`), `codes[i]` the index into `records`
    of event i's entity, `ts` its event time (epoch ms) and `fields[name]` the float64 value of
    each numeric field a feature reads (finite, at most `MAX_ABS_VALUE` in magnitude). `order`,
    when given, is ``np.argsort(codes, kind="stable")``.
    """
    n = len(codes)
    ng = len(records)
    if order is None:
        order = np.argsort(codes, kind="stable")
    g = codes[order].astype(np.int64)
    t = ts[order].astype(np.int64)
    pos = np.arange(n, dtype=np.int64)
    first = np.ones(n, dtype=bool)
    first[1:] = g[1:] != g[:-1]
    last = np.ones(n, dtype=bool)
    last[:-1] = first[1:]
    used = {f.field for f in layout.features if f.field is not None}
    xs = {name: np.asarray(fields[name], dtype=np.float64)[order] for name in used}

    out = records.copy()
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = pos
    accepted: dict[str, np.ndarray] = {}
    values: dict[str, np.ndarray] = {}
    fired: dict[str, np.ndarray] = {}
    flags = records["flags"].copy()
    any_acc = np.zeros(n, dtype=bool)

    for gi, bucket_ms in enumerate(layout.buckets):
        b = t // bucket_ms
        m0 = records[f"m{gi}"].astype(np.int64)
        cm = _grouped_cummax(g, b, ng)
        before = np.empty(n, dtype=np.int64)
        before[1:] = cm[:-1]
        before[first] = -1
        m_before = np.maximum(before, m0[g])
        m_after = np.maximum(m_before, b)
        m_final = m0.copy()
        m_final[g[last]] = m_after[last]
        shift = m_final - m0
        d = m_after - m0[g]
        for i, f in enumerate(layout.features):
            if f.bucket_ms != bucket_ms:
                continue
            w = f.window_buckets
            acc = b >= m_before - (w - 1)
            any_acc |= acc
            x = None if f.field is None else xs[f.field]
            value = _feature_values(
                f, i, records, out, g, b, t, x, acc, m_after, d, m_final, shift, ng
            )
            if f.alert_above is not None:
                bit = np.uint32(1 << i)
                alert0 = (records["flags"] & bit).astype(bool)
                fire, state = _alerts(value, acc, g, alert0, f.alert_above, ng)
                flags = (flags & ~bit) | (state.astype(np.uint32) << np.uint32(i))
                fired[f.name] = fire[inverse]
            else:
                fired[f.name] = np.zeros(n, dtype=bool)
            accepted[f.name] = acc[inverse]
            values[f.name] = np.where(acc, value, np.nan)[inverse]
        out[f"m{gi}"] = m_final

    upd = np.full(ng, -1, dtype=np.int64)
    np.maximum.at(upd, g[any_acc], t[any_acc])
    out["updated_at"] = np.maximum(records["updated_at"], upd)
    out["flags"] = flags
    return FeaturesAdvance(accepted, values, fired, out)


def _shifted(old: np.ndarray, shift: np.ndarray, fill) -> np.ndarray:
    """Return per-entity arrays moved `shift` buckets older (index k -> k + shift)."""
    ng, w = old.shape
    k_new = shift[:, None] + np.arange(w)[None, :]
    keep = k_new < w
    new = np.full((ng, w), fill, dtype=old.dtype)
    rows = np.broadcast_to(np.arange(ng)[:, None], (ng, w))
    new[rows[keep], k_new[keep]] = old[keep]
    return new


def _feature_values(
    f: FeatureDef,
    i: int,
    records: np.ndarray,
    out: np.ndarray,
    g: np.ndarray,
    b: np.ndarray,
    t: np.ndarray,
    x: np.ndarray | None,
    acc: np.ndarray,
    m_after: np.ndarray,
    d: np.ndarray,
    m_final: np.ndarray,
    shift: np.ndarray,
    ng: int,
) -> np.ndarray:
    """Compute feature i's value after each event (sorted by entity) and its new arrays."""
    n = len(g)
    w = f.window_buckets
    agg = f.aggregation
    lower = m_after - (w - 1)
    inside = d <= w - 1
    kmax = np.where(inside, w - 1 - d, 0)

    # Accepted events of this batch stay in the window of later events of their entity until
    # the first event whose window starts after their bucket: event j covers [j, exit_j).
    j = np.flatnonzero(acc)
    ranks, span = _dense(np.concatenate([lower, b[j]]), ng)
    exits = np.searchsorted(
        g * np.int64(span) + ranks[:n], g[j] * np.int64(span) + ranks[n:], side="right"
    )

    # Where accepted events land in the new arrays.
    k_new = m_final[g[j]] - b[j]
    keep_new = k_new < w
    jn = j[keep_new]
    flat_new = g[jn] * w + k_new[keep_new]

    if agg in ("count", "sum", "mean"):
        c0 = records[f"c{i}"].astype(np.int64)
        stored_c = np.where(inside, np.cumsum(c0, axis=1)[g, kmax], 0)
        delta = np.zeros(n + 1, dtype=np.int64)
        delta[j] += 1
        delta -= np.bincount(exits, minlength=n + 1)
        count = stored_c + np.cumsum(delta[:n])
        new_c = _shifted(c0, shift, 0)
        new_c.ravel()[:] += np.bincount(flat_new, minlength=ng * w).astype(np.int64)
        out[f"c{i}"] = new_c
        if agg == "count":
            return count.astype(np.float64)
        s0 = records[f"s{i}"]
        q = np.rint(x * SUM_SCALE).astype(np.int64)
        stored_s = np.where(inside, np.cumsum(s0, axis=1)[g, kmax], 0)
        delta = np.zeros(n + 1, dtype=np.int64)
        np.add.at(delta, j, q[j])
        np.subtract.at(delta, exits, q[j])
        total = stored_s + np.cumsum(delta[:n])
        new_s = _shifted(s0, shift, 0)
        np.add.at(new_s.ravel(), flat_new, q[jn])
        out[f"s{i}"] = new_s
        if agg == "sum":
            return total / SUM_SCALE
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / SUM_SCALE / np.maximum(count, 1), np.nan)

    v0 = records[f"v{i}"]
    if agg in ("min", "max"):
        sign = 1.0 if agg == "max" else -1.0
        signed0 = sign * v0
        stored = np.where(inside, np.maximum.accumulate(signed0, axis=1)[g, kmax], -np.inf)
        batch = _interval_max(j, exits, sign * x[j], n, -np.inf)
        value = sign * np.maximum(stored, batch)
        new_v = _shifted(signed0, shift, -np.inf)
        np.maximum.at(new_v.ravel(), flat_new, sign * x[jn])
        out[f"v{i}"] = sign * new_v
        return value

    # last: the latest event time wins, the later arrival on ties; a batch event arrives after
    # every stored one. Keys rank (event time, arrival) in one int64.
    t0 = records[f"t{i}"]
    present = t0 >= 0
    first_k = np.where(present.any(axis=1), np.argmax(present, axis=1), w)
    sk = first_k[g]
    stored_ok = inside & (sk <= kmax)
    stored_t = np.where(stored_ok, t0[g, np.minimum(sk, w - 1)], -1)
    stored_v = v0[g, np.minimum(sk, w - 1)]
    tr, _span = _dense(t[j], n + 1)
    key = tr * np.int64(n + 1) + j
    best = _interval_max(j, exits, key, n, np.int64(-1))
    has = best >= 0
    bj = np.where(has, best % (n + 1), 0)
    batch_t = np.where(has, t[bj], -1)
    use_batch = has & (batch_t >= stored_t)
    value = np.where(use_batch, x[bj], np.where(stored_t >= 0, stored_v, np.nan))
    new_t = _shifted(t0, shift, -1)
    new_v = _shifted(v0, shift, np.nan)
    if len(jn):
        # The winner of each bucket among this batch's events: the last by (time, arrival).
        o = np.lexsort((jn, t[jn], flat_new))
        fo = flat_new[o]
        tail = np.ones(len(o), dtype=bool)
        tail[:-1] = fo[1:] != fo[:-1]
        win = jn[o[tail]]
        cells = fo[tail]
        nt, nv = new_t.ravel(), new_v.ravel()
        take = t[win] >= nt[cells]
        nt[cells[take]] = t[win[take]]
        nv[cells[take]] = x[win[take]]
    out[f"t{i}"] = new_t
    out[f"v{i}"] = new_v
    return value
