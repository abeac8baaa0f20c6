"""Incremental runs: only the days whose files changed are computed, and the table is the same
as a computation over the whole store."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
from streamml.onnx_models import ModelRegistry, bundled_contract, bundled_model_path
from streamml.operators.monitoring import compute_metrics
from streamml.operators.monitoring_store import (
    compute_store_metrics,
    read_metrics,
    read_monitoring_inputs,
)

from tests.monitoring_support import random_reference, write_random_store

KEY = ("model", "version", "variant", "window", "window_start", "metric", "class", "predicted")
KEY += ("feature", "status")


def _rows(table: pa.Table) -> dict:
    return {tuple(r[k] for k in KEY): (r["value"], r["n"]) for r in table.to_pylist()}


def _same_as_whole_store(store: Path, out: Path) -> None:
    got = _rows(read_metrics(out))
    want = _rows(compute_metrics(*read_monitoring_inputs(store), {}))
    assert got.keys() == want.keys()
    for key, (value, n) in want.items():
        assert got[key][1] == n, key
        assert (got[key][0] is None) == (value is None), key
        if value is not None:
            assert abs(got[key][0] - value) <= 1e-9 * max(1.0, abs(value)), key


def test_only_changed_days_are_computed(tmp_path: Path) -> None:
    store, out, reg = tmp_path / "store", tmp_path / "out", tmp_path / "reg"
    write_random_store(store, np.random.default_rng(1), 60)
    first = compute_store_metrics(store, reg, out)
    assert first.days == first.days_computed == 4  # three days of requests from T0 (22:13 UTC)
    _same_as_whole_store(store, out)

    again = compute_store_metrics(store, reg, out)
    assert again.days_computed == 0 and again.rows == first.rows
    _same_as_whole_store(store, out)

    write_random_store(store, np.random.default_rng(2), 10, span_ms=3_600_000)
    more = compute_store_metrics(store, reg, out)
    assert more.days_computed == 1 and more.days == 4
    _same_as_whole_store(store, out)

    last_day = sorted((store / "predictions").glob("date=*"))[-1].name
    for sub in ("predictions", "outcomes"):
        shutil.rmtree(store / sub / last_day, ignore_errors=True)
    fewer = compute_store_metrics(store, reg, out)
    assert fewer.days_computed == 0 and fewer.days == 3
    _same_as_whole_store(store, out)

    full = compute_store_metrics(store, reg, out, full=True)
    assert full.days_computed == 3
    _same_as_whole_store(store, out)


def test_a_new_training_reference_computes_its_days_again(tmp_path: Path) -> None:
    store, out, reg = tmp_path / "store", tmp_path / "out", tmp_path / "reg"
    write_random_store(store, np.random.default_rng(5), 30)
    compute_store_metrics(store, reg, out)
    assert not [r for r in read_metrics(out).to_pylist() if r["metric"] == "psi"]
    registry = ModelRegistry(reg)
    reference = random_reference(np.random.default_rng(6))
    model = tmp_path / "m.onnx"
    shutil.copy(bundled_model_path(), model)
    registry.register(
        model, contract=bundled_contract(), name="triage", version="1",
        training_reference=reference,
    )  # fmt: skip
    run = compute_store_metrics(store, reg, out)
    assert run.days_computed == run.days
    psi = [r for r in read_metrics(out).to_pylist() if r["metric"] == "psi"]
    assert psi and {r["version"] for r in psi} == {"1"}
    assert compute_store_metrics(store, reg, out).days_computed == 0
