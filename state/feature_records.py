"""The state record of one source's features per entity, and reading feature values from it.

`RecordLayout` fixes the bytes of one entity's record for a tuple of features of one source (see
its docstring); `streamml.operators.aggregations.advance_features` updates records and
`read_features` computes the values as of a time, so values decay with no new events.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from streamml.state.definitions import FeatureDef

__all__ = ["MAX_ABS_VALUE", "SUM_SCALE", "RecordLayout", "read_features"]

SUM_SCALE = 1_000_000
"""Fixed-point units per 1.0 of a summed field: sums are exact to 1e-6."""
MAX_ABS_VALUE = 1e9
"""Largest magnitude of an aggregated field value (larger ones are dead letters), so fixed-point
sums of up to nine million such values stay exact in 64 bits."""


@dataclass(frozen=True)
class RecordLayout:
    """The state record of one source's features: one numpy structured row per entity.

    Fields: ``m{g}`` (i64) the largest bucket M of bucket-length group g, ``updated_at`` (i64,
    the event time of the latest accepted event, -1 for none), ``flags`` (u32, bit i set while
    feature i is in alert), then per feature i of window W: ``c{i}`` (u32[W], events per bucket,
    `count`, `sum` and `mean`), ``s{i}`` (i64[W], fixed-point sums, `sum` and `mean`), ``v{i}``
    (f64[W], per-bucket min, max or last value; +inf, -inf or NaN when empty) and ``t{i}`` (i64[W],
    event time of the last value, -1 when empty, `last`). Index k of an array is bucket ``M - k``.
    """

    features: tuple[FeatureDef, ...]

    def __post_init__(self) -> None:
        if not self.features:
            raise ValueError("a record layout needs at least one feature")
        if len(self.features) > 32:
            raise ValueError(f"at most 32 features per source, got {len(self.features)}")
        sources = {f.source.name for f in self.features}
        if len(sources) != 1:
            raise ValueError(f"features of one record share one source, got {sorted(sources)}")

    @functools.cached_property
    def read_plan(self) -> _ReadPlan:
        """How `read_features` reads this layout's records."""
        return _ReadPlan(self)

    @functools.cached_property
    def buckets(self) -> tuple[int, ...]:
        """The distinct bucket lengths (ms), one group each, in first-use order."""
        return tuple(dict.fromkeys(f.bucket_ms for f in self.features))

    def group(self, i: int) -> int:
        """Return the bucket-length group of feature i."""
        return self.buckets.index(self.features[i].bucket_ms)

    @functools.cached_property
    def dtype(self) -> np.dtype:
        """The numpy dtype of one record."""
        fields: list[tuple] = [(f"m{g}", "<i8") for g in range(len(self.buckets))]
        fields += [("updated_at", "<i8"), ("flags", "<u4")]
        for i, f in enumerate(self.features):
            w = f.window_buckets
            if f.aggregation in ("count", "sum", "mean"):
                fields.append((f"c{i}", "<u4", (w,)))
            if f.aggregation in ("sum", "mean"):
                fields.append((f"s{i}", "<i8", (w,)))
            if f.aggregation in ("min", "max", "last"):
                fields.append((f"v{i}", "<f8", (w,)))
            if f.aggregation == "last":
                fields.append((f"t{i}", "<i8", (w,)))
        return np.dtype(fields)

    def empty(self, n: int) -> np.ndarray:
        """Return `n` records of entities never seen."""
        return np.repeat(self._empty, n)

    @functools.cached_property
    def _empty(self) -> np.ndarray:
        rec = np.zeros(1, dtype=self.dtype)
        for g in range(len(self.buckets)):
            rec[f"m{g}"] = -1
        rec["updated_at"] = -1
        for i, f in enumerate(self.features):
            if f.aggregation == "min":
                rec[f"v{i}"] = np.inf
            elif f.aggregation == "max":
                rec[f"v{i}"] = -np.inf
            elif f.aggregation == "last":
                rec[f"t{i}"] = -1
                rec[f"v{i}"] = np.nan
        return rec


class _ReadPlan:
    """How to read every feature of a layout at once: its arrays side by side, one reduction each.

    The arrays of all features are concatenated per kind (additive: counts and fixed-point sums;
    extreme: signed minima and maxima; last: event times and values), each column knowing its
    feature and bucket index, so that a read masks the columns inside each feature's window and
    reduces each feature's segment with one `reduceat` per kind, whatever the number of features.
    """

    def __init__(self, layout: RecordLayout) -> None:
        feats = layout.features
        self.names = tuple(f.name for f in feats)
        self.bucket = np.array([f.bucket_ms for f in feats], dtype=np.int64)
        self.groups = tuple(f"m{layout.group(i)}" for i in range(len(feats)))
        self.add: list[tuple[str, int]] = []
        self.ext: list[tuple[str, int, float]] = []
        self.last: list[tuple[int, int]] = []
        for i, f in enumerate(feats):
            if f.aggregation in ("count", "sum", "mean"):
                self.add.append((f"c{i}", i))
                if f.aggregation != "count":
                    self.add.append((f"s{i}", i))
            elif f.aggregation in ("min", "max"):
                self.ext.append((f"v{i}", i, 1.0 if f.aggregation == "max" else -1.0))
            else:
                self.last.append((i, f.window_buckets))
        self.windows = np.array([f.window_buckets for f in feats], dtype=np.int64)
        self.aggs = tuple(f.aggregation for f in feats)
        names = layout.dtype.names
        self.scalar: list[tuple] = []
        for i, f in enumerate(feats):
            agg = f.aggregation
            if agg in ("count", "sum", "mean"):
                a_i = names.index(f"c{i}")
                b_i = names.index(f"s{i}") if agg != "count" else -1
            elif agg in ("min", "max"):
                a_i, b_i = names.index(f"v{i}"), -1
            else:
                a_i, b_i = names.index(f"t{i}"), names.index(f"v{i}")
            mi = names.index(f"m{layout.group(i)}")
            self.scalar.append((f.name, agg, f.bucket_ms, f.window_buckets, mi, a_i, b_i))

    @staticmethod
    def _columns(items, windows: np.ndarray):
        """Return (feature of each column, bucket index of each column, segment starts)."""
        feat = np.concatenate([np.full(windows[i], i) for i in items]) if items else np.empty(0)
        k = np.concatenate([np.arange(windows[i]) for i in items]) if items else np.empty(0)
        sizes = [int(windows[i]) for i in items]
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) if items else None
        return feat.astype(np.int64), k.astype(np.int64), starts

    @functools.cached_property
    def add_cols(self):
        return self._columns([i for _n, i in self.add], self.windows)

    @functools.cached_property
    def ext_cols(self):
        return self._columns([i for _n, i, _s in self.ext], self.windows)

    @functools.cached_property
    def last_cols(self):
        return self._columns([i for i, _w in self.last], self.windows)

    def _mask(self, m: np.ndarray, a: np.ndarray, feat: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Columns inside their feature's window as of each record's time (and retained)."""
        mc = m[:, feat]
        bucket = mc - k[None, :]
        ac = a[:, feat]
        return (bucket <= ac) & (bucket >= ac - (self.windows[feat][None, :] - 1)) & (mc >= 0)

    def read_one(self, row: tuple, as_of: int) -> dict[str, float]:
        """Return every feature's value of one record (a row of ``records.tolist()``).

        The scalar twin of `read` for single-entity reads, where numpy's per-call overhead
        would dominate; the same tests hold both to the oracle.
        """
        out: dict[str, float] = {}
        nan = math.nan
        for name, agg, bucket, w, mi, a_i, b_i in self.scalar:
            m = row[mi]
            a = as_of // bucket
            lo = m - a if m > a else 0
            hi = m - a + w - 1
            if hi > w - 1:
                hi = w - 1
            if m < 0 or hi < lo:
                out[name] = 0.0 if agg in ("count", "sum") else nan
                continue
            first = row[a_i][lo : hi + 1].tolist()
            if agg == "count":
                out[name] = float(sum(first))
            elif agg in ("sum", "mean"):
                total = sum(row[b_i][lo : hi + 1].tolist()) / SUM_SCALE
                if agg == "sum":
                    out[name] = total
                else:
                    count = sum(first)
                    out[name] = total / count if count else nan
            elif agg == "max":
                best = max(first)
                out[name] = best if best != -math.inf else nan
            elif agg == "min":
                best = min(first)
                out[name] = best if best != math.inf else nan
            else:
                values = row[b_i][lo : hi + 1].tolist()
                out[name] = next((v for t, v in zip(first, values, strict=True) if t >= 0), nan)
        return out

    def read(self, records: np.ndarray, as_of: np.ndarray) -> dict[str, np.ndarray]:
        n = len(records)
        m = np.stack([records[g].astype(np.int64) for g in self.groups], axis=1)
        a = as_of[:, None] // self.bucket[None, :]
        out: dict[str, np.ndarray] = {}
        if self.add:
            feat, k, starts = self.add_cols
            values = np.concatenate([records[name].astype(np.int64) for name, _i in self.add], 1)
            sums = np.add.reduceat(np.where(self._mask(m, a, feat, k), values, 0), starts, axis=1)
            j = 0
            while j < len(self.add):
                i = self.add[j][1]
                agg = self.aggs[i]
                count = sums[:, j].astype(np.float64)
                if agg == "count":
                    out[self.names[i]] = count
                    j += 1
                    continue
                total = sums[:, j + 1] / SUM_SCALE
                if agg == "sum":
                    out[self.names[i]] = total
                else:
                    with np.errstate(invalid="ignore", divide="ignore"):
                        out[self.names[i]] = np.where(
                            count > 0, total / np.maximum(count, 1), np.nan
                        )
                j += 2
        if self.ext:
            feat, k, starts = self.ext_cols
            signs = np.concatenate([np.full(self.windows[i], sg) for _n, i, sg in self.ext])
            values = np.concatenate([records[name] for name, _i, _s in self.ext], 1) * signs
            masked = np.where(self._mask(m, a, feat, k), values, -np.inf)
            best = np.maximum.reduceat(masked, starts, axis=1)
            for j, (_name, i, sign) in enumerate(self.ext):
                col = best[:, j]
                out[self.names[i]] = np.where(np.isfinite(col), sign * col, np.nan)
        if self.last:
            feat, k, starts = self.last_cols
            times = np.concatenate([records[f"t{i}"] for i, _w in self.last], 1)
            values = np.concatenate([records[f"v{i}"] for i, _w in self.last], 1)
            ok = self._mask(m, a, feat, k) & (times >= 0)
            key = np.where(ok, self.windows[feat][None, :] - k[None, :], 0)
            best = np.maximum.reduceat(key, starts, axis=1)
            rows = np.arange(n)
            for j, (i, w) in enumerate(self.last):
                found = best[:, j] > 0
                col = starts[j] + np.where(found, w - best[:, j], 0)
                out[self.names[i]] = np.where(found, values[rows, col], np.nan)
        return out


def read_features(
    layout: RecordLayout, records: np.ndarray, as_of: np.ndarray, names: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """Return each feature's value per record as of `as_of[r]` (epoch ms); NaN when undefined.

    `count` and `sum` are 0 over an empty window; `mean`, `min`, `max` and `last` are NaN. A
    read as of a bucket before the record's latest sees only the buckets still retained.
    """
    values = layout.read_plan.read(records, np.asarray(as_of, dtype=np.int64).reshape(-1))
    if names is None:
        return values
    return {name: values[name] for name in names}
