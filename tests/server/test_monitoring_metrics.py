"""GET /metrics serves the live-performance gauges of the prediction store's metrics table."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from streamml.operators.monitoring_store import compute_store_metrics

from tests.monitoring_support import write_random_store
from tests.server.conftest import client


def test_metrics_include_monitoring_gauges(serve, tmp_path: Path) -> None:
    store = tmp_path / "store"
    with serve(prediction_store=store) as server, client(server) as c:
        assert "streamml_model_performance{" not in c.get("/metrics").text
        write_random_store(store, np.random.default_rng(4), 30)
        compute_store_metrics(store, tmp_path / "registry")
        text = c.get("/metrics").text
    assert 'streamml_model_performance{class="",feature="",metric="accuracy"' in text
    assert "streamml_http_requests_total" in text
