"""The latest monitoring figures in the Prometheus text format: every sample line parses."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from streamml.operators.monitoring import compute_metrics
from streamml.operators.monitoring_prometheus import MonitoringCollector, render_prometheus
from streamml.operators.monitoring_store import read_monitoring_inputs

from tests.monitoring_support import random_reference, write_random_store

LINE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*\{([a-z_]+="(?:[^"\\]|\\.)*",?)*\} \S+$')


def test_text_parses_and_holds_the_latest_windows(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    write_random_store(tmp_path, rng, 80)
    table = compute_metrics(
        *read_monitoring_inputs(tmp_path), {("triage", "1"): random_reference(rng)}
    )
    text = render_prometheus(table).decode()
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert samples and all(LINE.match(line) for line in samples), samples[:3]
    families = {f.name: f for f in text_string_to_metric_families(text)}
    perf = families["streamml_model_performance"]
    labels = {(s.labels["variant"], s.labels["window"], s.labels["metric"]) for s in perf.samples}
    assert ("live", "all", "accuracy") in labels and ("live", "hour", "predictions") in labels
    assert any(s.labels["metric"] == "psi" and s.labels["feature"] for s in perf.samples)
    cumulative = [
        s.value
        for s in perf.samples
        if s.labels["variant"] == "live" and s.labels["window"] == "all"
        and s.labels["metric"] == "predictions"
    ]  # fmt: skip
    hourly = [
        r["value"]
        for r in table.to_pylist()
        if r["variant"] == "live" and r["window"] == "hour" and r["metric"] == "predictions"
    ]
    assert cumulative == [sum(hourly)]
    starts = families["streamml_model_performance_window_start_seconds"].samples
    assert {s.labels["window"] for s in starts} == {"hour", "day"}


def test_collector_serves_nothing_until_the_table_exists(tmp_path: Path) -> None:
    from streamml.operators.monitoring_store import compute_store_metrics

    registry = CollectorRegistry()
    registry.register(MonitoringCollector(tmp_path / "metrics"))
    assert b"streamml_model_performance" not in generate_latest(registry)
    write_random_store(tmp_path, np.random.default_rng(2), 20)
    compute_store_metrics(tmp_path, tmp_path / "no-registry")
    assert b"streamml_model_performance{" in generate_latest(registry)
