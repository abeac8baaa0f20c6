"""`streamml serve` as its own process: granian, two workers, metrics summed, records kept."""

from __future__ import annotations

import httpx
from streamml.state.predictions import read_predictions

from streamml.server import ServeConfig, start_server_process
from tests.server.conftest import CONTEXT, NOW


def test_two_granian_workers(state, registry) -> None:
    config = ServeConfig(
        state_dir=state, registry_dir=registry.root, port=0, workers=2, flush_interval_ms=60_000
    )
    assert config.http == "granian"
    with start_server_process(config) as proc, httpx.Client(base_url=proc.url) as c:
        for i in range(12):
            body = {"model": "speedtest-triage", "account": f"acct-{i}", "ts": NOW}
            r = c.post("/v1/predictions", json={**body, "context": CONTEXT, "request_id": f"w{i}"})
            assert r.status_code == 200, r.text
        text = c.get("/metrics").text
    line = 'streamml_http_requests_total{method="POST",route="/v1/predictions",status="200"} 12.0'
    assert line in text
    assert read_predictions(config.store).num_rows == 12  # written at shutdown
