"""Live model performance per model, version and variant: pure computation over Arrow tables.

`compute_metrics` takes the prediction store's rows, the outcome store's rows and each version's
training reference, and returns the metrics table (`METRICS_SCHEMA`, long form): one row per
model, version, variant, window, window start, metric and, where the metric has them, class,
predicted class, feature and freshness status. Windows are tumbling by request time (UTC
`hour` and `day`) and `all` (cumulative, `window_start` null). The figures are ratios of
additive sums per window (`streamml.operators.monitoring_stats`); cumulative figures are
computed from the sum of the day windows' sums.

Metrics (`n` is the number of rows a figure is computed from):

- from predictions: `predictions`; `class_share` (class = predicted class; labels outside the
  version's classes are counted in `predictions` only); `freshness` (share of each status among
  the feature values, per feature and over all features, feature null); `psi` per feature;
- estimated before outcomes (confidence-based, as NannyML's CBPE, taking the stored
  probabilities as calibrated): `estimated_accuracy` = mean top-class probability;
  per class c, with E[TP] = sum of p_c over rows predicted c: `estimated_precision` = E[TP] /
  rows predicted c, `estimated_recall` = E[TP] / sum of p_c over all rows, `estimated_f1` =
  2 E[TP] / (rows predicted c + sum of p_c);
- realised (outcome rows, in the window of their request time): `outcomes`, `accuracy`
  (label == outcome), `precision`, `recall`, `f1` per class (F1 = 2TP / (2TP + FP + FN)),
  `confusion` (class = observed, predicted = predicted: a count), `log_loss` (mean of
  -ln p(outcome), p clipped to [1e-15, 1]; an outcome outside the classes has p = 0),
  `ece` (10 equal-width bins of the top-class probability, bin = min(floor(10 p), 9):
  sum over bins of |correct - sum of p| / outcomes);
- `estimation_error_accuracy`, and per class `estimation_error_precision`, `_recall` and
  `_f1`: estimate (over all the window's predictions) - realised (over its outcomes), in
  windows with outcomes.

PSI: each logged value (null = missing, its own bin) is binned with the reference's edges;
PSI = sum over bins of (a - e) ln(a / e), a and e the window's and the training share, each
floored at `PSI_EPSILON`. Undefined figures (a division by zero) are null.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from streamml.operators.monitoring_stats import (
    ECE_BINS,
    LOG_LOSS_EPSILON,
    PSI_EPSILON,
    GroupStats,
    Key,
    window_stats,
)
from streamml.state.predictions import FEATURE_STATUSES

__all__ = [
    "ECE_BINS",
    "LOG_LOSS_EPSILON",
    "METRICS_SCHEMA",
    "PSI_EPSILON",
    "WINDOWS",
    "compute_metrics",
    "metrics_of",
]

WINDOWS: dict[str, int | None] = {"hour": 3_600_000, "day": 86_400_000, "all": None}
"""Window kinds and their length in ms (`all`: cumulative)."""

_TS = pa.timestamp("ms", tz="UTC")
METRICS_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("version", pa.string()),
        ("variant", pa.string()),
        ("window", pa.string()),
        ("window_start", _TS),
        ("metric", pa.string()),
        ("class", pa.string()),
        ("predicted", pa.string()),
        ("feature", pa.string()),
        ("status", pa.string()),
        ("value", pa.float64()),
        ("n", pa.int64()),
    ]
)
"""Columns of the metrics table (long form; see the module docstring)."""

_KEYS = ("model", "version", "variant")


@dataclass
class _Out:
    """Column blocks of the metrics table, concatenated once at the end."""

    blocks: list[dict[str, Any]] = field(default_factory=list)

    def add(
        self,
        key: tuple[str, str, str],
        window: str,
        starts: np.ndarray | None,
        metric: str,
        value: np.ndarray,
        n: np.ndarray,
        *,
        keep: np.ndarray | None = None,
        **labels: str | None,
    ) -> None:
        if keep is not None and not keep.all():
            value, n = value[keep], n[keep]
            starts = None if starts is None else starts[keep]
        self.blocks.append(
            {"key": key, "window": window, "starts": starts, "metric": metric, "value": value}
            | {"n": n, "labels": labels}
        )

    def table(self) -> pa.Table:
        if not self.blocks:
            return METRICS_SCHEMA.empty_table()
        sizes = [len(b["value"]) for b in self.blocks]
        total = sum(sizes)

        def repeat(get: Any) -> pa.Array:
            values = [get(b) for b in self.blocks]
            codes, uniq = [], {}
            for v in values:
                codes.append(uniq.setdefault(v, len(uniq)))
            idx = np.repeat(np.array(codes, dtype=np.int32), sizes)
            return pa.DictionaryArray.from_arrays(
                pa.array(idx), pa.array(list(uniq), pa.string())
            ).cast(pa.string())

        cols: dict[str, pa.Array] = {}
        for i, name in enumerate(_KEYS):
            cols[name] = repeat(lambda b, i=i: b["key"][i])
        cols["window"] = repeat(lambda b: b["window"])
        starts = np.concatenate(
            [
                b["starts"] if b["starts"] is not None else np.zeros(len(b["value"]), np.int64)
                for b in self.blocks
            ]
        )
        no_start = np.repeat([b["starts"] is None for b in self.blocks], sizes)
        cols["window_start"] = pa.array(starts, _TS, mask=no_start)
        cols["metric"] = repeat(lambda b: b["metric"])
        for name in ("class", "predicted", "feature", "status"):
            cols[name] = repeat(lambda b, name=name: b["labels"].get(name))
        value = np.concatenate([np.asarray(b["value"], np.float64) for b in self.blocks])
        cols["value"] = pa.array(value, pa.float64(), mask=~np.isfinite(value))
        n = np.concatenate([np.asarray(b["n"], np.int64) for b in self.blocks])
        cols["n"] = pa.array(n, pa.int64())
        assert len(n) == total
        return pa.table(cols, schema=METRICS_SCHEMA)


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _finish(out: _Out, key: Key, window: str, s: GroupStats) -> None:
    """Add the metrics of statistics `s` (windows of kind `window`) to `out`."""
    starts = s.starts
    has_pred, has_out = s.predictions > 0, s.outcomes > 0
    n = s.predictions.astype(np.int64)

    def pred(metric: str, value: np.ndarray, count: np.ndarray = n, **labels: str) -> None:
        out.add(key, window, starts, metric, value, count, keep=has_pred, **labels)

    pred("predictions", s.predictions)
    est = {"accuracy": _div(s.confidence, s.predictions)}
    pred("estimated_accuracy", est["accuracy"])
    for c, name in enumerate(s.classes):
        pred("class_share", _div(s.predicted[:, c], s.predictions), **{"class": name})
        est[f"precision:{name}"] = _div(s.etp[:, c], s.predicted[:, c])
        est[f"recall:{name}"] = _div(s.etp[:, c], s.psum[:, c])
        est[f"f1:{name}"] = _div(2 * s.etp[:, c], s.predicted[:, c] + s.psum[:, c])
        for m in ("precision", "recall", "f1"):
            pred(f"estimated_{m}", est[f"{m}:{name}"], **{"class": name})
    overall = sum(s.fresh.values(), np.zeros((len(n), len(FEATURE_STATUSES))))
    for i, status in enumerate(FEATURE_STATUSES):
        tot = overall.sum(axis=1)
        pred("freshness", _div(overall[:, i], tot), tot.astype(np.int64), status=status)
        for name, counts in s.fresh.items():
            tot = counts.sum(axis=1)
            out.add(
                key, window, starts, "freshness", _div(counts[:, i], tot), tot.astype(np.int64),
                keep=tot > 0, feature=name, status=status,
            )  # fmt: skip
    for name, hist in s.hist.items():
        tot = hist.sum(axis=1)
        actual = np.maximum(_div(hist, tot[:, None]), PSI_EPSILON)
        expected = s.expected[name]
        psi = ((actual - expected) * np.log(actual / expected)).sum(axis=1)
        out.add(key, window, starts, "psi", psi, tot.astype(np.int64), keep=tot > 0, feature=name)
    m = s.outcomes.astype(np.int64)

    def real(metric: str, value: np.ndarray, **labels: str) -> None:
        out.add(key, window, starts, metric, value, m, keep=has_out, **labels)

    real("outcomes", s.outcomes)
    realised = {"accuracy": _div(s.correct, s.outcomes)}
    real("accuracy", realised["accuracy"])
    real("log_loss", _div(s.loss, s.outcomes))
    gap = np.abs(s.ece_correct - s.ece_confidence).sum(axis=1)
    real("ece", _div(gap, s.outcomes))
    predicted, observed = s.cells.sum(axis=1), s.cells.sum(axis=2)
    for c, name in enumerate(s.classes):
        tp = s.cells[:, c, c]
        realised[f"precision:{name}"] = _div(tp, predicted[:, c])
        realised[f"recall:{name}"] = _div(tp, observed[:, c])
        realised[f"f1:{name}"] = _div(2 * tp, predicted[:, c] + observed[:, c])
        for metric in ("precision", "recall", "f1"):
            real(metric, realised[f"{metric}:{name}"], **{"class": name})
        for p, pname in enumerate(s.classes):
            real("confusion", s.cells[:, c, p], **{"class": name, "predicted": pname})
    for name, value in realised.items():
        metric, _, cls = name.partition(":")
        labels = {"class": cls} if cls else {}
        real(f"estimation_error_{metric}", est[name] - value, **labels)


def metrics_of(stats: Mapping[str, Mapping[Key, GroupStats]]) -> pa.Table:
    """Return the metrics table of statistics by window kind, then (model, version, variant)."""
    out = _Out()
    for window, groups in stats.items():
        for key, s in groups.items():
            _finish(out, key, window, s)
    return out.table()


def compute_metrics(
    predictions: pa.Table,
    outcomes: pa.Table,
    references: Mapping[tuple[str, str], Mapping[str, Any] | None],
) -> pa.Table:
    """Return the metrics table of `predictions` and `outcomes` (see the module docstring).

    `references` maps (model, version) to the version's training reference (None or absent:
    no `psi` rows for it).
    """
    sizes = {window: size for window, size in WINDOWS.items() if size is not None}
    stats = window_stats(predictions, outcomes, references, sizes)
    stats["all"] = {key: s.total() for key, s in stats["day"].items()}
    return metrics_of(stats)
