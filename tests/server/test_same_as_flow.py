"""The same requests through the REST service and through the prediction flow: same records."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
from streamml.dataflows.predict import RequestsConfig
from streamml.state.ondemand import OnDemandStore
from streamml.state.predictions import read_predictions, read_timeouts

from tests.predict_support import MODEL, run_predict_flow
from tests.server.conftest import ACCOUNTS, CONTEXT, NOW

_VOLATILE = {"scored_at", "latency", "timed_out_at"}


def _requests() -> list[dict]:
    out = []
    for i, account in enumerate([*ACCOUNTS, "nobody"]):
        ctx = dict(CONTEXT, download_ratio=0.1 + i / 40)
        if i % 5 == 0:
            del ctx["packet_loss_pct"]
        if i == 7:
            del ctx["latency_ms"]
        out.append(
            {"request_id": f"q{i}", "model": MODEL, "account": account, "ts": NOW, "context": ctx}
        )
    return out


def _rows(table) -> dict:
    return {
        (r["request_id"], r.get("role", "")): {k: v for k, v in r.items() if k not in _VOLATILE}
        for r in table.to_pylist()
    }


def test_rest_and_flow_record_identical_predictions_and_provenance(
    tmp_path: Path, serve, state, registry
) -> None:
    registry.route(MODEL, split={"1": 0.5, "2": 0.5}, experiment="same", shadow=["3"])
    answers = OnDemandStore(state)
    doc = orjson.dumps({"devices": [{"rssi_dbm": -71.0, "noise_dbm": -95.0}], "modem": {}})
    for i, account in enumerate(list(ACCOUNTS)[:8]):
        fetched_at = NOW - (60_000 if i % 2 else 7_200_000)
        answers.put_many(
            answers.shard_of(account.encode()), "telemetry", [(account.encode(), fetched_at, doc)]
        )
    answers.close()
    requests = _requests()
    rest_store = tmp_path / "rest-store"
    with serve(prediction_store=rest_store) as server, httpx.Client(base_url=server.url) as c:
        codes = [c.post("/v1/predictions", json=r).status_code for r in requests]
    assert codes.count(200) == len(requests) - 1 and codes[7] == 422
    path = tmp_path / "requests.jsonl"
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in requests))
    config = run_predict_flow(
        tmp_path, registry, RequestsConfig(kind="file", paths=(str(path),)), state_dir=state
    )
    rest, flow = _rows(read_predictions(rest_store)), _rows(read_predictions(config.store))
    assert len(flow) == 2 * (len(requests) - 1)
    assert rest == flow
    variants = {v["variant"] for v in flow.values()}
    assert {"ab:1", "ab:2", "shadow:3"} <= variants, variants
    statuses = {f["status"] for v in flow.values() for f in v["features"]}
    assert statuses == {"fresh", "stale", "defaulted"}
    assert _rows(read_timeouts(rest_store)) == _rows(read_timeouts(config.store))
