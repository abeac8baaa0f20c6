"""Live performance metrics held against a brute-force recomputation in plain Python."""

from __future__ import annotations

import math
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from streamml.operators.monitoring import (
    ECE_BINS,
    LOG_LOSS_EPSILON,
    PSI_EPSILON,
    compute_metrics,
)
from streamml.operators.monitoring_store import read_monitoring_inputs
from streamml.state.outcomes import OUTCOME_SCHEMA
from streamml.state.predictions import FEATURE_STATUSES, PREDICTION_SCHEMA

from tests.monitoring_support import random_reference, write_random_store

SIZES = {"hour": 3_600_000, "day": 86_400_000, "all": None}


def _ms(ts) -> int:
    return int(ts.timestamp() * 1000) if not isinstance(ts, int) else ts


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def _windows(rows):
    """{(model, version, variant, window, start): [rows]} by request time."""
    out = defaultdict(list)
    for r in rows:
        ts = _ms(r["request_ts"])
        for window, size in SIZES.items():
            start = None if size is None else ts // size * size
            out[(r["model"], r["version"], r["variant"], window, start)].append(r)
    return out


def oracle(predictions: list[dict], outcomes: list[dict], references: dict) -> dict:
    """Every metric, keyed (model, version, variant, window, start, metric, class, predicted,
    feature, status) -> (value, n), computed one row at a time."""
    out = {}

    def put(group, metric, value, n, cls=None, pred=None, feature=None, status=None):
        out[(*group, metric, cls, pred, feature, status)] = (value, n)

    estimates = {}
    for group, rows in _windows(predictions).items():
        classes = rows[0]["classes"]
        n = len(rows)
        put(group, "predictions", float(n), n)
        put(group, "estimated_accuracy", sum(max(r["probabilities"]) for r in rows) / n, n)
        est = {"accuracy": sum(max(r["probabilities"]) for r in rows) / n}
        for c, name in enumerate(classes):
            npred = sum(1 for r in rows if r["label"] == name)
            etp = sum(r["probabilities"][c] for r in rows if r["label"] == name)
            psum = sum(r["probabilities"][c] for r in rows)
            put(group, "class_share", npred / n, n, cls=name)
            est[f"precision:{name}"] = _ratio(etp, npred)
            est[f"recall:{name}"] = _ratio(etp, psum)
            est[f"f1:{name}"] = _ratio(2 * etp, npred + psum)
            for m in ("precision", "recall", "f1"):
                put(group, f"estimated_{m}", est[f"{m}:{name}"], n, cls=name)
        estimates[group] = est
        entries = [f for r in rows for f in r["features"]]
        names = sorted({f["name"] for f in entries})
        for status in FEATURE_STATUSES:
            hits = sum(1 for f in entries if f["status"] == status)
            put(group, "freshness", _ratio(hits, len(entries)), len(entries), status=status)
            for name in names:
                mine = [f for f in entries if f["name"] == name]
                hits = sum(1 for f in mine if f["status"] == status)
                put(group, "freshness", hits / len(mine), len(mine), feature=name, status=status)
        ref = references.get((group[0], group[1])) or {"features": {}}
        for name in names:
            if name not in ref["features"]:
                continue
            edges = ref["features"][name]["edges"]
            expected = [*ref["features"][name]["shares"], ref["features"][name]["missing_share"]]
            counts = [0] * (len(edges) + 2)
            values = [f["value"] for f in entries if f["name"] == name]
            for v in values:
                counts[len(edges) + 1 if v is None else sum(1 for e in edges if e < v)] += 1
            psi = 0.0
            for cnt, e in zip(counts, expected, strict=True):
                a, e = max(cnt / len(values), PSI_EPSILON), max(e, PSI_EPSILON)
                psi += (a - e) * math.log(a / e)
            put(group, "psi", psi, len(values), feature=name)
    for group, rows in _windows(outcomes).items():
        classes = rows[0]["classes"]
        n = len(rows)
        put(group, "outcomes", float(n), n)
        realised = {"accuracy": sum(r["label"] == r["outcome"] for r in rows) / n}
        put(group, "accuracy", realised["accuracy"], n)
        loss = 0.0
        for r in rows:
            p = r["probabilities"][classes.index(r["outcome"])] if r["outcome"] in classes else 0.0
            loss -= math.log(min(max(p, LOG_LOSS_EPSILON), 1.0))
        put(group, "log_loss", loss / n, n)
        bins = defaultdict(lambda: [0.0, 0.0])
        for r in rows:
            conf = max(r["probabilities"])
            b = min(math.floor(conf * ECE_BINS), ECE_BINS - 1)
            bins[b][0] += r["label"] == r["outcome"]
            bins[b][1] += conf
        put(group, "ece", sum(abs(c - s) for c, s in bins.values()) / n, n)
        for name in classes:
            tp = sum(1 for r in rows if r["label"] == name and r["outcome"] == name)
            npred = sum(1 for r in rows if r["label"] == name)
            ntrue = sum(1 for r in rows if r["outcome"] == name)
            realised[f"precision:{name}"] = _ratio(tp, npred)
            realised[f"recall:{name}"] = _ratio(tp, ntrue)
            realised[f"f1:{name}"] = _ratio(2 * tp, npred + ntrue)
            for m in ("precision", "recall", "f1"):
                put(group, m, realised[f"{m}:{name}"], n, cls=name)
            for pred in classes:
                cell = sum(1 for r in rows if r["outcome"] == name and r["label"] == pred)
                put(group, "confusion", float(cell), n, cls=name, pred=pred)
        est = estimates.get(group, {})
        for name, real in realised.items():
            metric, _, cls = name.partition(":")
            guess = est.get(name)
            err = None if guess is None or real is None else guess - real
            put(group, f"estimation_error_{metric}", err, n, cls=cls or None)
    return out


def _computed(table: pa.Table) -> dict:
    out = {}
    for r in table.to_pylist():
        start = None if r["window_start"] is None else _ms(r["window_start"])
        key = (r["model"], r["version"], r["variant"], r["window"], start, r["metric"])
        key += (r["class"], r["predicted"], r["feature"], r["status"])
        assert key not in out, key
        out[key] = (r["value"], r["n"])
    return out


def _check(root: Path, references: dict) -> None:
    predictions, outcomes = read_monitoring_inputs(root)
    got = _computed(compute_metrics(predictions, outcomes, references))
    want = oracle(predictions.to_pylist(), outcomes.to_pylist(), references)
    assert set(got) == set(want), set(got) ^ set(want)
    for key, (value, n) in want.items():
        g_value, g_n = got[key]
        assert g_n == n, key
        if value is None:
            assert g_value is None, (key, g_value)
        else:
            assert g_value is not None and abs(g_value - value) <= 1e-9 * max(1.0, abs(value)), (
                key,
                g_value,
                value,
            )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1), st.integers(1, 30))
def test_every_metric_matches_a_brute_force_recomputation(seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    references = {("triage", "1"): random_reference(rng), ("triage", "2"): None}
    with tempfile.TemporaryDirectory() as tmp:
        write_random_store(Path(tmp), rng, n, span_ms=int(rng.choice([7_200_000, 3 * 86_400_000])))
        _check(Path(tmp), references)


def test_empty_stores_give_an_empty_table(tmp_path: Path) -> None:
    predictions, outcomes = read_monitoring_inputs(tmp_path)
    assert compute_metrics(predictions, outcomes, {}).num_rows == 0


def _calibration_tables(
    rng: np.random.Generator, n: int, sharpen: float
) -> tuple[pa.Table, pa.Table]:
    """Predictions whose outcomes are drawn from `p`; the stored probabilities are `p` sharpened
    by the power `sharpen` (1: calibrated by construction)."""
    classes = ["modem", "network", "wifi"]
    p = rng.dirichlet([0.8, 0.8, 0.8], n)
    truth = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    stored = p**sharpen
    stored /= stored.sum(axis=1, keepdims=True)
    labels = [classes[i] for i in stored.argmax(axis=1)]
    ts = 1_700_000_000_000 + rng.integers(0, 86_400_000, n)
    common = {
        "model": ["m"] * n,
        "version": ["1"] * n,
        "variant": ["live"] * n,
        "request_ts": ts,
        "label": labels,
        "probabilities": stored.tolist(),
        "classes": [classes] * n,
    }
    preds = {**common, "features": [[]] * n}
    predictions = pa.table(
        {k: pa.array(v, PREDICTION_SCHEMA.field(k).type) for k, v in preds.items()}
    )
    outs = {**common, "outcome": [classes[i] for i in truth]}
    outcomes = pa.table({k: pa.array(v, OUTCOME_SCHEMA.field(k).type) for k, v in outs.items()})
    return predictions, outcomes


def _cumulative(table: pa.Table, metric: str, cls: str | None = None) -> float:
    rows = [
        r
        for r in table.to_pylist()
        if r["window"] == "all" and r["metric"] == metric and r["class"] == cls
    ]
    assert len(rows) == 1
    return rows[0]["value"]


def test_cbpe_estimates_accuracy_of_calibrated_probabilities() -> None:
    rng = np.random.default_rng(5)
    table = compute_metrics(*_calibration_tables(rng, 40_000, 1.0), {})
    assert abs(_cumulative(table, "estimation_error_accuracy")) < 0.015
    for cls in ("modem", "network", "wifi"):
        assert abs(_cumulative(table, "estimation_error_precision", cls)) < 0.03
        assert abs(_cumulative(table, "estimation_error_recall", cls)) < 0.03


def test_cbpe_misses_on_overconfident_probabilities() -> None:
    rng = np.random.default_rng(6)
    table = compute_metrics(*_calibration_tables(rng, 40_000, 3.0), {})
    assert _cumulative(table, "estimation_error_accuracy") > 0.08
    assert _cumulative(table, "ece") > 0.08
