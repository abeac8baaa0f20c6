"""Additive statistics of predictions and outcomes per model, version, variant and window.

`window_stats` turns the prediction and outcome rows into, per (model, version, variant), one
`GroupStats` of sums per window (UTC hours or days of request time): counts, sums of
probabilities, confusion cells, ECE bin sums, PSI bin counts and freshness counts. Every
monitoring metric is a ratio of these sums (`streamml.operators.monitoring` computes them), so
the statistics of several windows add up (`GroupStats.total`) to those of their union: the
cumulative figures are the sum of the days', and a day's statistics, once computed, need not be
computed again until that day's files change. Everything is vectorised (numpy `bincount` over
window and class codes); Python loops run over groups, classes and features only.
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

__all__ = ["ECE_BINS", "PSI_EPSILON", "GroupStats", "window_stats"]

ECE_BINS = 10
"""Equal-width bins of the top-class probability for the expected calibration error."""
PSI_EPSILON = 1e-4
"""Floor of a bin's share in the PSI (an empty bin would make it infinite)."""
LOG_LOSS_EPSILON = 1e-15
"""Floor of the probability of the observed class in the log loss."""

_KEYS = ("model", "version", "variant")
Key = tuple[str, str, str]


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


def _ms(col: pa.ChunkedArray) -> np.ndarray:
    return col.cast(pa.int64()).to_numpy().astype(np.int64)


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


@dataclass
class GroupStats:
    """Sums per window of one (model, version, variant); arrays have one row per window.

    `starts` are the windows' starts (epoch ms; None once summed into one cumulative row).
    Predictions: `predictions`, `predicted` (per class), `etp` (sum of p(c) over rows predicted
    c), `psum` (sum of p(c)), `confidence` (sum of the top-class probability), `fresh` (per
    feature, counts per status) and `hist` (per referenced feature, counts per bin, the last the
    missing bin) with `expected` (the training shares, floored). Outcomes: `outcomes`,
    `correct`, `loss` (sum of -ln p(outcome)), `ece_correct` / `ece_confidence` (per confidence
    bin) and `cells` (observed x predicted; index k is a label outside the classes).
    """

    classes: list[str]
    starts: np.ndarray | None
    predictions: np.ndarray
    predicted: np.ndarray
    etp: np.ndarray
    psum: np.ndarray
    confidence: np.ndarray
    outcomes: np.ndarray
    correct: np.ndarray
    loss: np.ndarray
    ece_correct: np.ndarray
    ece_confidence: np.ndarray
    cells: np.ndarray
    fresh: dict[str, np.ndarray] = field(default_factory=dict)
    hist: dict[str, np.ndarray] = field(default_factory=dict)
    expected: dict[str, np.ndarray] = field(default_factory=dict)

    _ARRAYS = (
        "predictions", "predicted", "etp", "psum", "confidence", "outcomes", "correct", "loss",
        "ece_correct", "ece_confidence", "cells",
    )  # fmt: skip

    @classmethod
    def empty(cls, classes: list[str], starts: np.ndarray | None, nw: int) -> GroupStats:
        """Return all-zero statistics of `nw` windows."""
        k = len(classes)
        z = np.zeros
        return cls(
            classes, starts, z(nw), z((nw, k)), z((nw, k)), z((nw, k)), z(nw), z(nw), z(nw),
            z(nw), z((nw, ECE_BINS)), z((nw, ECE_BINS)), z((nw, k + 1, k + 1)),
        )  # fmt: skip

    def total(self, other: GroupStats | None = None) -> GroupStats:
        """Return the sums over all windows (and over `other`'s) as one cumulative window."""
        parts = [self] if other is None else [self, other]
        if any(p.classes != self.classes for p in parts):
            raise ValueError(f"cannot add statistics of classes {[p.classes for p in parts]}")
        out = GroupStats.empty(self.classes, None, 1)
        for name in self._ARRAYS:
            setattr(out, name, sum(getattr(p, name).sum(axis=0, keepdims=True) for p in parts))
        for p in parts:
            for f, a in p.fresh.items():
                out.fresh[f] = out.fresh.get(f, 0) + a.sum(axis=0, keepdims=True)
            for f, a in p.hist.items():
                if f in out.hist and out.hist[f].shape[1] != a.shape[1]:
                    raise ValueError(f"feature {f!r}: PSI bins differ between statistics")
                out.hist[f] = out.hist.get(f, 0) + a.sum(axis=0, keepdims=True)
                out.expected[f] = p.expected[f]
        return out

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Return the statistics as named arrays (for `numpy.savez`), names under `prefix`."""
        out = {f"{prefix}/{n}": getattr(self, n) for n in self._ARRAYS}
        for kind in ("fresh", "hist", "expected"):
            out |= {f"{prefix}/{kind}/{f}": a for f, a in getattr(self, kind).items()}
        return out

    @classmethod
    def from_arrays(
        cls, classes: list[str], arrays: Mapping[str, np.ndarray], prefix: str
    ) -> GroupStats:
        """Rebuild statistics written by `to_arrays` (window starts are not kept)."""
        values = {n: arrays[f"{prefix}/{n}"] for n in cls._ARRAYS}
        out = cls(classes, None, **values)
        for name, a in arrays.items():
            head, _, feature = name.partition("/")[2].partition("/")
            if name.startswith(prefix + "/") and head in ("fresh", "hist", "expected") and feature:
                getattr(out, head)[feature] = a
        return out


def _window_index(ts: np.ndarray, starts: np.ndarray, size: int) -> np.ndarray:
    return np.searchsorted(starts, ts // size * size)


def _prediction_sums(
    s: GroupStats, data: _Rows, idx: np.ndarray, feats: _Features, w: np.ndarray, nw: int,
    reference: Mapping[str, Any] | None,
) -> None:  # fmt: skip
    k = len(s.classes)
    P = data.probabilities(idx, k)
    lab = data.labels(idx, s.classes)
    known = lab >= 0
    s.predictions = np.bincount(w, minlength=nw).astype(np.float64)
    s.confidence = np.bincount(w, weights=P.max(axis=1) if k else None, minlength=nw)
    cell = w[known] * k + lab[known]
    p_pred = P[np.flatnonzero(known), lab[known]]
    s.predicted = np.bincount(cell, minlength=nw * k).reshape(nw, k).astype(np.float64)
    s.etp = np.bincount(cell, weights=p_pred, minlength=nw * k).reshape(nw, k)
    s.psum = np.stack([np.bincount(w, weights=P[:, c], minlength=nw) for c in range(k)], axis=1)
    s.psum = s.psum.reshape(nw, k)
    we = w[feats.parent]
    nf, ns = len(feats.names), len(FEATURE_STATUSES)
    ok = feats.status >= 0
    fcell = (we[ok] * nf + feats.code[ok]) * ns + feats.status[ok]
    counts = np.bincount(fcell, minlength=nw * nf * ns).reshape(nw, nf, ns)
    s.fresh = {name: counts[:, f].astype(np.float64) for f, name in enumerate(feats.names)}
    ref_features = (reference or {}).get("features", {})
    order = np.argsort(feats.code, kind="stable")  # a radix sort for int16 codes
    bounds = np.searchsorted(feats.code[order], np.arange(nf + 1))
    for f, name in enumerate(feats.names):
        ref = ref_features.get(name)
        if ref is None:
            continue
        edges = np.asarray(ref["edges"], np.float64)
        entries = order[bounds[f] : bounds[f + 1]]
        nb = len(edges) + 2
        cells = we[entries] * nb + bin_index(edges, feats.value[entries])
        s.hist[name] = np.bincount(cells, minlength=nw * nb).reshape(nw, nb).astype(np.float64)
        shares = np.array([*ref["shares"], ref.get("missing_share", 0.0)], np.float64)
        s.expected[name] = np.maximum(shares, PSI_EPSILON)


def _outcome_sums(s: GroupStats, data: _Rows, idx: np.ndarray, w: np.ndarray, nw: int) -> None:
    k = len(s.classes)
    P = data.probabilities(idx, k)
    lab = data.labels(idx, s.classes)
    truth = data.outcomes(idx, s.classes)
    correct = data.correct(idx)
    p_true = np.where(truth >= 0, P[np.arange(len(P)), np.maximum(truth, 0)], 0.0)
    conf = P.max(axis=1) if k else np.zeros(len(P))
    ece_bin = np.minimum(np.floor(conf * ECE_BINS), ECE_BINS - 1).astype(np.int64)
    s.outcomes = np.bincount(w, minlength=nw).astype(np.float64)
    s.correct = np.bincount(w, weights=correct, minlength=nw)
    s.loss = np.bincount(w, weights=-np.log(np.clip(p_true, LOG_LOSS_EPSILON, 1.0)), minlength=nw)
    cell = w * ECE_BINS + ece_bin
    s.ece_correct = np.bincount(cell, correct, nw * ECE_BINS).reshape(nw, ECE_BINS)
    s.ece_confidence = np.bincount(cell, conf, nw * ECE_BINS).reshape(nw, ECE_BINS)
    t, p = np.where(truth >= 0, truth, k), np.where(lab >= 0, lab, k)
    k1 = k + 1
    cells = np.bincount((w * k1 + t) * k1 + p, minlength=nw * k1 * k1)
    s.cells = cells.reshape(nw, k1, k1).astype(np.float64)


def window_stats(
    predictions: pa.Table,
    outcomes: pa.Table,
    references: Mapping[tuple[str, str], Mapping[str, Any] | None],
    sizes: Mapping[str, int],
) -> dict[str, dict[Key, GroupStats]]:
    """Return, per window kind of `sizes` (name -> ms), each group's statistics per window.

    A group's windows are those with a prediction or an outcome, in time order.
    """
    pgroups, ogroups = _groups(predictions), _groups(outcomes)
    pdata = _Rows(predictions, features=True) if pgroups else None
    odata = _Rows(outcomes, features=False) if ogroups else None
    split: dict[Key, _Features] = {}
    if pdata is not None:
        assert pdata.features is not None
        parts = pdata.features.split(list(pgroups.values()), predictions.num_rows)
        split = dict(zip(pgroups, parts, strict=True))
    out: dict[str, dict[Key, GroupStats]] = {window: {} for window in sizes}
    for key in sorted(pgroups.keys() | ogroups.keys()):
        pidx, oidx = pgroups.get(key), ogroups.get(key)
        classes = (
            pdata.classes_of(pidx, key)
            if pidx is not None and pdata is not None
            else odata.classes_of(oidx, key)  # type: ignore[union-attr, arg-type]
        )
        if oidx is not None and odata is not None and odata.classes_of(oidx, key) != classes:
            raise ValueError(f"{key}: outcome rows name other classes than the predictions")
        pts = pdata.ts[pidx] if pidx is not None and pdata is not None else np.empty(0, np.int64)
        ots = odata.ts[oidx] if oidx is not None and odata is not None else np.empty(0, np.int64)
        for window, size in sizes.items():
            starts = np.unique(np.concatenate([pts, ots]) // size) * size
            nw = len(starts)
            s = GroupStats.empty(classes, starts, nw)
            if pidx is not None and pdata is not None:
                w = _window_index(pts, starts, size)
                _prediction_sums(s, pdata, pidx, split[key], w, nw, references.get(key[:2]))
            if oidx is not None and odata is not None:
                _outcome_sums(s, odata, oidx, _window_index(ots, starts, size), nw)
            out[window][key] = s
    return out
