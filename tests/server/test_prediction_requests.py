"""Requests pushed to the requests topic by the REST service, answered by the flow, read back."""

from __future__ import annotations

from pathlib import Path

import httpx
from streamml.dataflows.predict import RequestsConfig

from tests.predict_support import MODEL, run_predict_flow
from tests.server.conftest import CONTEXT, NOW


def test_requests_go_through_kafka_to_the_flow_and_back(
    tmp_path: Path, serve, state, registry, kafka_broker, make_topic
) -> None:
    topic = make_topic(2)
    server = serve(brokers=(kafka_broker,), requests_topic=topic)
    with server as s, httpx.Client(base_url=s.url, timeout=10) as c:
        ready = c.get("/readyz").json()
        assert ready["checks"]["broker"] == {"ok": True}
        ids = []
        for i in range(10):
            body = {"model": MODEL, "account": f"acct-{i}", "ts": NOW, "context": CONTEXT}
            if i:
                body["request_id"] = f"k{i}"
            r = c.post("/v1/prediction-requests", json=body)
            assert r.status_code == 202, r.text
            assert r.headers["location"] == f"/v1/predictions/{r.json()['request_id']}"
            ids.append(r.json()["request_id"])
        assert ids[1:] == [f"k{i}" for i in range(1, 10)] and len(ids[0]) == 32
        bad = c.post("/v1/prediction-requests", json={"model": MODEL})
        assert bad.status_code == 422 and bad.json()["field"] == "account"
        before = c.get(f"/v1/predictions/{ids[3]}")
        assert before.status_code == 404 and before.headers["retry-after"] == "1"
        run_predict_flow(
            tmp_path,
            registry,
            RequestsConfig(kind="kafka"),
            state_dir=state,
            kafka_env=(
                ("STREAMML_KAFKA_BROKERS", kafka_broker),
                ("STREAMML_KAFKA_TOPIC", topic),
                ("STREAMML_KAFKA_START", "earliest"),
                ("STREAMML_KAFKA_STOP_AT_END", "1"),
            ),
        )
        for i, rid in enumerate(ids):
            after = c.get(f"/v1/predictions/{rid}")
            assert after.status_code == 200, after.text
            got = after.json()
            assert (got["request_id"], got["account"], got["ts"]) == (rid, f"acct-{i}", NOW)
            assert got["features"]["download_ratio"]["value"] == CONTEXT["download_ratio"]


def test_without_a_broker_prediction_requests_are_503(serve) -> None:
    with serve() as server, httpx.Client(base_url=server.url) as c:
        body = {"model": MODEL, "account": "a", "context": CONTEXT}
        r = c.post("/v1/prediction-requests", json=body)
        assert r.status_code == 503 and r.json()["error"] == "no_broker"
