"""Live model performance per model, version and variant: pure computation over Arrow tables.

`compute_metrics` takes the prediction store's rows, the outcome store's rows and each version's
training reference, and returns the metrics table (`METRICS_SCHEMA`, long form): one row per
model, version, variant, window, window start, metric and, where the metric has them, class,
predicted class, feature and freshness status. Windows are tumbling by request time (UTC
`hour` and `day`) and `all` (cumulative, `window_start` null). Everything is vectorised
(numpy `bincount` over window/class codes); Python loops run over groups, classes and
features only.

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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from streamml.onnx_models.reference import bin_index
from streamml.state.predictions import FEATURE_STATUSES

__all__ = [
    "ECE_BINS",
    "LOG_LOSS_EPSILON",
    "METRICS_SCHEMA",
    "PSI_EPSILON",
    "WINDOWS",
    "compute_metrics",
]

WINDOWS: dict[str, int | None] = {"hour": 3_600_000, "day": 86_400_000, "all": None}
"""Window kinds and their length in ms (`all`: cumulative)."""
ECE_BINS = 10
"""Equal-width bins of the top-class probability for the expected calibration error."""
PSI_EPSILON = 1e-4
"""Floor of a bin's share in the PSI (an empty bin would make it infinite)."""
LOG_LOSS_EPSILON = 1e-15
"""Floor of the probability of the observed class in the log loss."""

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
_STATUS_SET = pa.array(FEATURE_STATUSES)


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


def _groups(table: pa.Table) -> dict[tuple[str, str, str], np.ndarray]:
    """Row indices of each (model, version, variant) of `table`."""
    if table.num_rows == 0:
        return {}
    codes = np.zeros(table.num_rows, np.int64)
    dicts = []
    for name in _KEYS:
        enc = pc.dictionary_encode(table[name]).combine_chunks()
        codes = codes * len(enc.dictionary) + enc.indices.to_numpy(zero_copy_only=False)
        dicts.append(enc.dictionary.to_pylist())
    order = np.argsort(codes, kind="stable")
    uniq, first = np.unique(codes[order], return_index=True)
    out = {}
    for code, rows in zip(uniq.tolist(), np.split(order, first[1:]), strict=True):
        parts = []
        for d in reversed(dicts):
            code, i = divmod(code, len(d))
            parts.append(d[i])
        out[tuple(reversed(parts))] = rows
    return out


def _encode(col: pa.ChunkedArray) -> tuple[np.ndarray, list[str | None]]:
    enc = pc.dictionary_encode(col).combine_chunks()
    codes = pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, enc.dictionary.to_pylist()


def _lookup(values: list[str | None], classes: list[str]) -> np.ndarray:
    """Class index of each dictionary value (-1 when not a class), plus -1 for nulls at [-1]."""
    where = {c: i for i, c in enumerate(classes)}
    return np.array([where.get(v, -1) for v in values] + [-1], dtype=np.int64)


class _Rows:
    """A table's columns as numpy arrays, converted once and sliced per group."""

    def __init__(self, table: pa.Table, *, features: bool) -> None:
        self.ts = _ms(table["request_ts"])
        probs = table["probabilities"].combine_chunks()
        self.lengths = pc.list_value_length(probs).to_numpy(zero_copy_only=False)
        self.starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        self.flat = pc.list_flatten(probs).to_numpy(zero_copy_only=False).astype(np.float64)
        self.label, self.label_values = _encode(table["label"])
        joined = pc.binary_join(table["classes"], "\x1f")
        self.classes, self.class_lists = _encode(joined)
        self.outcome, self.outcome_values = (
            _encode(table["outcome"]) if "outcome" in table.column_names else (None, [])
        )
        self.features = _feature_rows(table["features"]) if features else None

    def classes_of(self, rows: np.ndarray, key: tuple[str, str, str]) -> list[str]:
        found = np.unique(self.classes[rows])
        if len(found) != 1 or found[0] < 0:
            raise ValueError(
                f"{'@'.join(key[:2])} ({key[2]}): expected one class list per version, found "
                f"{len(found)}; the store mixes model files under one version"
            )
        joined = self.class_lists[int(found[0])]
        assert joined is not None
        return joined.split("\x1f")

    def probabilities(self, rows: np.ndarray, k: int) -> np.ndarray:
        if not (self.lengths[rows] == k).all():
            raise ValueError(f"expected {k} probabilities per row (one per class)")
        return self.flat[self.starts[rows][:, None] + np.arange(k)]

    def labels(self, rows: np.ndarray, classes: list[str]) -> np.ndarray:
        return _lookup(self.label_values, classes)[self.label[rows]]

    def outcomes(self, rows: np.ndarray, classes: list[str]) -> np.ndarray:
        assert self.outcome is not None
        return _lookup(self.outcome_values, classes)[self.outcome[rows]]

    def correct(self, rows: np.ndarray) -> np.ndarray:
        """Whether the stored label equals the outcome (as strings)."""
        assert self.outcome is not None
        values = {v: i for i, v in enumerate(self.label_values) if v is not None}
        as_label = np.array(
            [values.get(v, -2) if v is not None else -2 for v in self.outcome_values] + [-2],
            dtype=np.int64,
        )
        return (as_label[self.outcome[rows]] == self.label[rows]).astype(np.float64)


def _index_in(col: pa.ChunkedArray | pa.Array, values: Sequence[str]) -> np.ndarray:
    found = pc.index_in(col, value_set=pa.array(list(values), pa.string()))
    return pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64)


def _ms(col: pa.ChunkedArray) -> np.ndarray:
    return col.cast(pa.int64()).to_numpy().astype(np.int64)


def _windows(ts: np.ndarray, size: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Window index of each row (0..nw-1) and the windows' starts (None for `all`)."""
    if size is None:
        return np.zeros(len(ts), np.int64), None
    uniq, inverse = np.unique(ts // size, return_inverse=True)
    return inverse.astype(np.int64), uniq * size


def _prediction_metrics(
    out: _Out,
    key: tuple[str, str, str],
    data: _Rows,
    idx: np.ndarray,
    feats: _Features,
    classes: list[str],
    reference: Mapping[str, Any] | None,
) -> dict[str, tuple[np.ndarray | None, dict[str, np.ndarray]]]:
    k = len(classes)
    P = data.probabilities(idx, k)
    lab = data.labels(idx, classes)
    ts = data.ts[idx]
    known = lab >= 0
    conf = P.max(axis=1) if k else np.zeros(len(P))
    p_pred = np.where(known, P[np.arange(len(P)), np.maximum(lab, 0)], 0.0)
    drift = _drift_plan(feats, reference)
    estimates: dict[str, tuple[np.ndarray | None, dict[str, np.ndarray]]] = {}
    for window, size in WINDOWS.items():
        w, starts = _windows(ts, size)
        nw = int(w.max()) + 1 if len(w) else 0
        n = np.bincount(w, minlength=nw)
        out.add(key, window, starts, "predictions", n.astype(np.float64), n)
        counts = np.bincount(w[known] * k + lab[known], minlength=nw * k).reshape(nw, k)
        etp = np.bincount(
            w[known] * k + lab[known], weights=p_pred[known], minlength=nw * k
        ).reshape(nw, k)
        est = {"accuracy": _div(np.bincount(w, weights=conf, minlength=nw), n)}
        out.add(key, window, starts, "estimated_accuracy", est["accuracy"], n)
        for c, name in enumerate(classes):
            psum = np.bincount(w, weights=P[:, c], minlength=nw)
            out.add(key, window, starts, "class_share", _div(counts[:, c], n), n, **{"class": name})
            est[f"precision:{name}"] = _div(etp[:, c], counts[:, c])
            est[f"recall:{name}"] = _div(etp[:, c], psum)
            est[f"f1:{name}"] = _div(2 * etp[:, c], counts[:, c] + psum)
            for m in ("precision", "recall", "f1"):
                out.add(
                    key, window, starts, f"estimated_{m}", est[f"{m}:{name}"], n, **{"class": name}
                )
        estimates[window] = (starts, est)
        _feature_metrics(out, key, window, w[feats.parent], starts, nw, feats, drift)
    return estimates


@dataclass(frozen=True)
class _Features:
    parent: np.ndarray
    code: np.ndarray
    names: list[str]
    value: np.ndarray
    status: np.ndarray

    def split(self, groups: Sequence[np.ndarray], n_rows: int) -> list[_Features]:
        """Return the entries of each group of rows, `parent` renumbered to positions in it."""
        group = np.full(n_rows, -1, np.int16 if len(groups) < 2**15 else np.int64)
        pos = np.empty(n_rows, np.int64)
        for g, idx in enumerate(groups):
            group[idx] = g
            pos[idx] = np.arange(len(idx))
        of_entry = group[self.parent]
        order = np.argsort(of_entry, kind="stable")  # a radix sort for int16 groups
        bounds = np.searchsorted(of_entry[order], np.arange(len(groups) + 1))
        out = []
        for g in range(len(groups)):
            sel = order[bounds[g] : bounds[g + 1]]
            parent, code, value = pos[self.parent[sel]], self.code[sel], self.value[sel]
            out.append(_Features(parent, code, self.names, value, self.status[sel]))
        return out


def _codes(col: pa.Array, known: dict[str, int]) -> np.ndarray:
    """Code of each string of `col` in `known` (new strings are added; nulls give -1)."""
    enc = pc.dictionary_encode(col)
    local = [
        known.setdefault(v, len(known)) if v is not None else -1 for v in enc.dictionary.to_pylist()
    ]
    lookup = np.array([*local, -1], dtype=np.int64)
    return lookup[pc.fill_null(enc.indices, -1).to_numpy(zero_copy_only=False)]


def _feature_rows(col: pa.ChunkedArray) -> _Features:
    """Return the logged feature values of every row, one chunk at a time (no column copy)."""
    parents, codes, values, statuses = [], [], [], []
    names: dict[str, int] = {}
    status_codes = {s: i for i, s in enumerate(FEATURE_STATUSES)}
    row0 = 0
    for chunk in col.chunks:
        lengths = pc.fill_null(pc.list_value_length(chunk), 0).to_numpy(zero_copy_only=False)
        parents.append(np.repeat(np.arange(row0, row0 + len(chunk), dtype=np.int32), lengths))
        row0 += len(chunk)
        flat = pc.list_flatten(chunk)
        codes.append(_codes(flat.field("name"), names))
        value = pc.fill_null(flat.field("value"), np.nan).to_numpy(zero_copy_only=False)
        values.append(np.asarray(value, np.float64))
        found = dict(status_codes)
        status = _codes(flat.field("status"), found)
        statuses.append(np.where(status < len(FEATURE_STATUSES), status, -1))

    def cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(parts, dtype=dtype) if parts else np.empty(0, dtype)

    return _Features(
        parent=cat(parents, np.int32),
        code=cat(codes, np.int16 if len(names) < 2**15 else np.int64),
        names=list(names),
        value=cat(values, np.float64),
        status=cat(statuses, np.int8),
    )


@dataclass(frozen=True)
class _Drift:
    """One referenced feature of a group: its entries, their bins and the training shares."""

    name: str
    entries: np.ndarray
    bins: np.ndarray
    nb: int
    expected: np.ndarray


def _drift_plan(feats: _Features, reference: Mapping[str, Any] | None) -> list[_Drift]:
    ref_features = (reference or {}).get("features", {})
    order = np.argsort(feats.code, kind="stable")  # a radix sort for int16 codes
    bounds = np.searchsorted(feats.code[order], np.arange(len(feats.names) + 1))
    plan = []
    for f, name in enumerate(feats.names):
        ref = ref_features.get(name)
        if ref is None:
            continue
        edges = np.asarray(ref["edges"], np.float64)
        entries = order[bounds[f] : bounds[f + 1]]
        shares = np.array([*ref["shares"], ref.get("missing_share", 0.0)], np.float64)
        plan.append(
            _Drift(
                name=name,
                entries=entries,
                bins=bin_index(edges, feats.value[entries]),
                nb=len(edges) + 2,
                expected=np.maximum(shares, PSI_EPSILON),
            )
        )
    return plan


def _feature_metrics(
    out: _Out,
    key: tuple[str, str, str],
    window: str,
    w: np.ndarray,
    starts: np.ndarray | None,
    nw: int,
    feats: _Features,
    drift: list[_Drift],
) -> None:
    nf, ns = len(feats.names), len(FEATURE_STATUSES)
    ok = feats.status >= 0
    cell = feats.code[ok].astype(np.int64) * ns + feats.status[ok]
    counts = np.bincount(w[ok] * (nf * ns) + cell, minlength=nw * nf * ns).reshape(nw, nf, ns)
    overall = counts.sum(axis=1)
    for s, status in enumerate(FEATURE_STATUSES):
        tot = overall.sum(axis=1)
        out.add(key, window, starts, "freshness", _div(overall[:, s], tot), tot, status=status)
        for f, name in enumerate(feats.names):
            tot = counts[:, f].sum(axis=1)
            out.add(
                key, window, starts, "freshness", _div(counts[:, f, s], tot), tot,
                keep=tot > 0, feature=name, status=status,
            )  # fmt: skip
    for d in drift:
        cells = w[d.entries] * d.nb + d.bins
        hist = np.bincount(cells, minlength=nw * d.nb).reshape(nw, d.nb)
        tot = hist.sum(axis=1)
        actual = np.maximum(_div(hist, tot[:, None]), PSI_EPSILON)
        psi = ((actual - d.expected) * np.log(actual / d.expected)).sum(axis=1)
        out.add(key, window, starts, "psi", psi, tot, keep=tot > 0, feature=d.name)


def _outcome_metrics(
    out: _Out,
    key: tuple[str, str, str],
    data: _Rows,
    idx: np.ndarray,
    classes: list[str],
    estimates: Mapping[str, tuple[np.ndarray | None, dict[str, np.ndarray]]],
) -> None:
    k = len(classes)
    P = data.probabilities(idx, k)
    lab = data.labels(idx, classes)
    truth = data.outcomes(idx, classes)
    correct = data.correct(idx)
    ts = data.ts[idx]
    rows = np.arange(len(P))
    p_true = np.where(truth >= 0, P[rows, np.maximum(truth, 0)], 0.0)
    loss = -np.log(np.clip(p_true, LOG_LOSS_EPSILON, 1.0))
    conf = P.max(axis=1) if k else np.zeros(len(P))
    ece_bin = np.minimum(np.floor(conf * ECE_BINS), ECE_BINS - 1).astype(np.int64)
    both = (truth >= 0) & (lab >= 0)
    for window, size in WINDOWS.items():
        w, starts = _windows(ts, size)
        nw = int(w.max()) + 1 if len(w) else 0
        n = np.bincount(w, minlength=nw)
        out.add(key, window, starts, "outcomes", n.astype(np.float64), n)
        acc = _div(np.bincount(w, weights=correct, minlength=nw), n)
        out.add(key, window, starts, "accuracy", acc, n)
        out.add(key, window, starts, "log_loss", _div(np.bincount(w, loss, nw), n), n)
        cell = w * ECE_BINS + ece_bin
        gap = np.bincount(cell, correct, nw * ECE_BINS) - np.bincount(cell, conf, nw * ECE_BINS)
        ece = np.abs(gap.reshape(nw, ECE_BINS)).sum(axis=1)
        out.add(key, window, starts, "ece", _div(ece, n), n)
        cm = np.bincount((w[both] * k + truth[both]) * k + lab[both], minlength=nw * k * k).reshape(
            nw, k, k
        )
        predicted = np.bincount(w * (k + 1) + np.where(lab >= 0, lab, k), minlength=nw * (k + 1))
        predicted = predicted.reshape(nw, k + 1)
        actual = np.bincount(w * (k + 1) + np.where(truth >= 0, truth, k), minlength=nw * (k + 1))
        actual = actual.reshape(nw, k + 1)
        realised = {"accuracy": acc}
        for c, name in enumerate(classes):
            tp = cm[:, c, c]
            figures = {
                "precision": _div(tp, predicted[:, c]),
                "recall": _div(tp, actual[:, c]),
                "f1": _div(2 * tp, predicted[:, c] + actual[:, c]),
            }
            for m, v in figures.items():
                out.add(key, window, starts, m, v, n, **{"class": name})
                realised[f"{m}:{name}"] = v
            for p, pname in enumerate(classes):
                out.add(
                    key, window, starts, "confusion", cm[:, c, p].astype(np.float64), n,
                    **{"class": name, "predicted": pname},
                )  # fmt: skip
        _estimation_errors(out, key, window, starts, n, realised, estimates.get(window))


def _estimation_errors(
    out: _Out,
    key: tuple[str, str, str],
    window: str,
    starts: np.ndarray | None,
    n: np.ndarray,
    realised: Mapping[str, np.ndarray],
    estimated: tuple[np.ndarray | None, dict[str, np.ndarray]] | None,
) -> None:
    if estimated is None:
        return
    est_starts, est = estimated
    if starts is None:
        at, found = np.zeros(len(n), np.int64), np.ones(len(n), bool)
    else:
        assert est_starts is not None
        at = np.minimum(np.searchsorted(est_starts, starts), max(len(est_starts) - 1, 0))
        found = (est_starts[at] == starts) if len(est_starts) else np.zeros(len(n), bool)
    for name, real in realised.items():
        metric, _, cls = name.partition(":")
        guess = (
            np.where(found, est[name][at], np.nan) if len(est[name]) else np.full(len(n), np.nan)
        )
        labels = {"class": cls} if cls else {}
        out.add(key, window, starts, f"estimation_error_{metric}", guess - real, n, **labels)


def compute_metrics(
    predictions: pa.Table,
    outcomes: pa.Table,
    references: Mapping[tuple[str, str], Mapping[str, Any] | None],
) -> pa.Table:
    """Return the metrics table of `predictions` and `outcomes` (see the module docstring).

    `references` maps (model, version) to the version's training reference (None or absent:
    no `psi` rows for it).
    """
    out = _Out()
    estimates: dict[tuple[str, str, str], Any] = {}
    class_lists: dict[tuple[str, str, str], list[str]] = {}
    groups = _groups(predictions)
    if groups:
        data = _Rows(predictions, features=True)
        assert data.features is not None
        split = data.features.split(list(groups.values()), predictions.num_rows)
        for (key, idx), feats in zip(groups.items(), split, strict=True):
            classes = class_lists[key] = data.classes_of(idx, key)
            ref = references.get((key[0], key[1]))
            estimates[key] = _prediction_metrics(out, key, data, idx, feats, classes, ref)
    groups = _groups(outcomes)
    if groups:
        data = _Rows(outcomes, features=False)
        for key, idx in groups.items():
            classes = class_lists.get(key) or data.classes_of(idx, key)
            _outcome_metrics(out, key, data, idx, classes, estimates.get(key, {}))
    return out.table()
