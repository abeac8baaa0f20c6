"""`streamml monitor compute` and `show` on a small store, run as a user runs them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest
from streamml.onnx_models import ensure_demo_registry
from streamml.operators.monitoring import METRICS_SCHEMA

from streamml.cli import main
from streamml.monitor_cli import sparkline
from tests.monitoring_support import write_random_store
from tests.streamml.test_cli import streamml


def test_compute_then_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store, registry = tmp_path / "store", tmp_path / "reg"
    write_random_store(store, np.random.default_rng(3), 60)
    ensure_demo_registry(registry)
    out = streamml(
        "monitor", "compute", "--prediction-store", str(store), "--registry", str(registry)
    )
    assert "metric rows written" in out.stdout
    table = pq.read_table(store / "metrics" / "metrics.parquet")
    assert table.schema == METRICS_SCHEMA and table.num_rows > 0

    shown = streamml("monitor", "show", "triage", "--prediction-store", str(store))
    text = shown.stdout
    assert "triage version 1 variant live" in text and "triage version 2 variant shadow-2" in text
    assert "accuracy" in text and "estimated accuracy" in text and "ECE" in text
    assert any(b in text for b in "▁▂▃▄▅▆▇█")
    assert "drift: unavailable" in text  # the registry holds no model named triage

    code = main([
        "monitor", "show", "triage", "--metrics", str(store / "metrics"), "--version", "1",
        "--variant", "live", "--window", "day", "--json",
    ])  # fmt: skip
    assert code == 0
    doc = orjson.loads(capsys.readouterr().out)
    [rep] = doc["variants"]
    assert rep["version"] == "1" and rep["variant"] == "live" and rep["window"] == "day"
    assert rep["cumulative"]["predictions"] == sum(w["predictions"] for w in rep["windows"])
    assert 0.0 <= rep["cumulative"]["accuracy"] <= 1.0

    assert main(["monitor", "show", "nope", "--prediction-store", str(store)]) == 2
    assert "no metrics for model 'nope'" in capsys.readouterr().err


def test_sparkline_scales_between_extremes() -> None:
    assert sparkline([0.0, 0.5, 1.0]) == "▁▅█"
    assert sparkline([None, 2.0, 2.0]) == " ▄▄"
    assert sparkline([]) == ""
