"""The state record of one source's features per entity, and reading feature values from it.

`RecordLayout` fixes the bytes of one entity's record for a tuple of features of one source (see
its docstring); `streamml.operators.aggregations.advance_features` updates records and
`read_features` computes the values as of a time, so values decay with no new events.
"""

from __future__ import annotations

import functools
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

    @property
    def buckets(self) -> tuple[int, ...]:
        """The distinct bucket lengths (ms), one group each, in first-use order."""
        return tuple(dict.fromkeys(f.bucket_ms for f in self.features))

    def group(self, i: int) -> int:
        """Return the bucket-length group of feature i."""
        return self.buckets.index(self.features[i].bucket_ms)

    @property
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


def read_features(
    layout: RecordLayout, records: np.ndarray, as_of: np.ndarray, names: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """Return each feature's value per record as of `as_of[r]` (epoch ms); NaN when undefined.

    `count` and `sum` are 0 over an empty window; `mean`, `min`, `max` and `last` are NaN.
    """
    as_of = np.asarray(as_of, dtype=np.int64)
    out: dict[str, np.ndarray] = {}
    for i, f in enumerate(layout.features):
        if names is not None and f.name not in names:
            continue
        w = f.window_buckets
        m = records[f"m{layout.group(i)}"].astype(np.int64)
        a = as_of // f.bucket_ms
        k = np.arange(w)[None, :]
        bucket = m[:, None] - k
        mask = (bucket <= a[:, None]) & (bucket >= a[:, None] - (w - 1)) & (m[:, None] >= 0)
        agg = f.aggregation
        if agg in ("count", "sum", "mean"):
            c = np.where(mask, records[f"c{i}"], 0).sum(axis=1).astype(np.float64)
            if agg == "count":
                out[f.name] = c
                continue
            s = np.where(mask, records[f"s{i}"], 0).sum(axis=1) / SUM_SCALE
            if agg == "sum":
                out[f.name] = s
            else:
                with np.errstate(invalid="ignore", divide="ignore"):
                    out[f.name] = np.where(c > 0, s / np.maximum(c, 1), np.nan)
        elif agg in ("min", "max"):
            v = records[f"v{i}"]
            ok = mask & np.isfinite(v)
            if agg == "max":
                r = np.where(ok, v, -np.inf).max(axis=1)
            else:
                r = np.where(ok, v, np.inf).min(axis=1)
            out[f.name] = np.where(ok.any(axis=1), r, np.nan)
        else:
            ok = mask & (records[f"t{i}"] >= 0)
            first_k = np.argmax(ok, axis=1)
            v = records[f"v{i}"][np.arange(len(records)), first_k]
            out[f.name] = np.where(ok.any(axis=1), v, np.nan)
    return out
