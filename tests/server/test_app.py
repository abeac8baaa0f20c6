"""The REST service against a real server on a loopback port, with a real HTTP client."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
from streamml.state.predictions import read_predictions, read_timeouts

from streamml.server.app import create_app
from streamml.server.config import ServeConfig
from streamml.server.runner import ServerThread
from streamml.telemetry import TelemetryConfig
from streamml.telemetry_process import start_telemetry_process
from tests.server.conftest import CONTEXT, NOW, client

MODEL = "speedtest-triage"


def body(rid: str, account: str = "acct-1", **kw) -> dict:
    return {
        "model": MODEL,
        "account": account,
        "ts": NOW,
        "context": CONTEXT,
        "request_id": rid,
        **kw,
    }


def test_probes_openapi_docs_and_metrics(serve) -> None:
    with serve() as server, client(server) as c:
        assert c.get("/healthz").json() == {"status": "ok"}
        ready = c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        assert set(ready.json()["checks"]) == {"online_store", "registry", "prediction_store"}
        doc = c.get("/openapi.json").json()
        app_paths = {r.pattern for r in server.server.config.app.routes} - {
            "/openapi.json",
            "/docs",
        }
        assert set(doc["paths"]) == app_paths
        assert "swagger-ui" in c.get("/docs").text
        assert c.post("/v1/predictions", json=body("m1")).status_code == 200
        assert c.get("/v1/features/acct-1", params={"as_of": NOW}).status_code == 200
        assert c.get("/nowhere").status_code == 404
        assert c.delete("/healthz").status_code == 405
        text = c.get("/metrics").text
    assert (
        'streamml_http_requests_total{method="POST",route="/v1/predictions",status="200"} 1.0'
        in text
    )
    assert (
        'streamml_http_request_seconds_bucket{le="0.5",route="/v1/features/{entity_key}"} 1.0'
        in text
    )
    assert 'streamml_feature_reads_total{status="fresh"}' in text
    assert 'streamml_predictions_total{model="speedtest-triage",role="answer"' in text


def test_tokens_scopes_rate_limit_and_body_limit(serve, tokens) -> None:
    with serve(tokens=tokens["path"], rate_per_s=0.5, burst=2, max_body_bytes=600) as server:
        with client(server) as anon:
            r = anon.get("/v1/features/acct-1")
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
            assert anon.get("/healthz").status_code == 200
        with client(server, "sml_not-a-token") as bad:
            assert bad.get("/v1/features/acct-1").json()["error"] == "unauthenticated"
        with client(server, tokens["reader"]) as reader:
            assert reader.get("/v1/features/acct-1").status_code == 200
            r = reader.post("/v1/predictions", json=body("t1"))
            assert r.status_code == 403 and "'predict'" in r.json()["detail"]
        with client(server, tokens["predictor"]) as predictor:
            r = predictor.post("/v1/models/speedtest-triage/route", json={"live": "2"})
            assert r.status_code == 403
            big = body("t2", context={**CONTEXT, "note": "x" * 1000})
            r = predictor.post("/v1/predictions", json=big)
            assert r.status_code == 413 and r.json()["error"] == "body_too_large"
            assert predictor.post("/v1/predictions", json=body("t3")).status_code == 200
            r = predictor.post("/v1/predictions", json=body("t4"))
            assert r.status_code == 429, r.text
            assert int(r.headers["retry-after"]) >= 1
        with client(server, tokens["admin"]) as admin:  # its own bucket, and admin implies all
            assert admin.get("/v1/features/acct-1").status_code == 200


def test_invalid_input_is_422_naming_the_field(serve) -> None:
    with serve() as server, client(server) as c:
        cases = [
            ({"account": "a", "context": {}}, "model"),
            ({"model": MODEL, "context": {}}, "account"),
            ({"model": MODEL, "account": "a" * 300}, "account"),
            ({"model": MODEL, "account": "a", "ts": -5}, "ts"),
            ({"model": MODEL, "account": "a", "context": [1]}, "context"),
            ({"model": "../etc", "account": "a"}, "model"),
            ({"model": MODEL, "account": "a", "request_id": 7}, "request_id"),
        ]
        for payload, field in cases:
            r = c.post("/v1/predictions", json=payload)
            assert r.status_code == 422 and r.json()["field"] == field, (payload, r.text)
        r = c.post("/v1/predictions", content=b"{nope")
        assert r.status_code == 422 and r.json()["field"] == "body"
        r = c.post("/v1/predictions", json=body("m", context={"upload_ratio": 1.0}))
        assert r.status_code == 422 and r.json()["missing"] == ["download_ratio", "latency_ms"]
        r = c.post("/v1/features:batch-get", json={"entities": ["a", 3]})
        assert r.status_code == 422 and r.json()["field"] == "entities[1]"
        r = c.post("/v1/features:batch-get", json={"entities": ["a"], "extra": 1})
        assert r.status_code == 422
        assert c.get("/v1/features/a", params={"as_of": "soon"}).json()["field"] == "as_of"
        assert c.get("/v1/features/" + "k" * 300).json()["field"] == "entity_key"
        assert c.get("/v1/features/a", params={"features": "nope"}).json()["field"] == "features"
        assert c.get("/v1/models/a..b").json()["field"] == "model"
        assert c.get("/v1/models/nope").status_code == 404
        r = c.post("/v1/predictions", json=body("u", model="nope"))
        assert r.status_code == 404 and r.json()["field"] == "model"


def test_features_one_and_batch(serve) -> None:
    with serve() as server, client(server) as c:
        one = c.get("/v1/features/acct-2", params={"as_of": NOW, "features": "signal_errors_24h"})
        f = one.json()["features"]["signal_errors_24h"]
        assert (f["value"], f["updated_at"], f["status"]) == (21, NOW - 120_000, "fresh")
        r = c.post(
            "/v1/features:batch-get",
            json={"entities": ["acct-1", "acct-9", "nobody"], "as_of": NOW},
        ).json()
        statuses = [x["features"]["signal_errors_24h"]["status"] for x in r["results"]]
        assert statuses == ["fresh", "stale", "missing"]
        assert r["results"][2]["features"]["signal_errors_24h"]["value"] is None


def test_models_routing_shadows_and_stored_predictions(serve, tokens) -> None:
    with serve(tokens=tokens["path"], flush_interval_ms=50) as server:
        admin = client(server, tokens["admin"])
        models = admin.get("/v1/models").json()
        assert [m["name"] for m in models["models"]] == [MODEL]
        one = admin.get(f"/v1/models/{MODEL}").json()
        assert {v["version"] for v in one["versions"]} == {"1", "2", "3"}
        assert "contract" in one["versions"][0] and "path" not in one["versions"][0]
        r = admin.post(f"/v1/models/{MODEL}/route", json={"shadow": ["3"]})
        assert r.status_code == 200 and r.json()["routing"]["shadow"] == ["3"]
        r = admin.post(f"/v1/models/{MODEL}/route", json={"live": "9"})
        assert r.status_code == 422 and "unknown version" in r.json()["detail"]
        answer = admin.post("/v1/predictions", json=body("s1")).json()
        assert answer["version"] == "1" and answer["shadows"][0]["version"] == "3"
        missing = admin.get("/v1/predictions/never")
        assert missing.status_code == 404 and missing.headers["retry-after"] == "1"
        assert admin.get("/v1/predictions/s1").json()["label"] == answer["label"]
        store = server.server.config.app.service.config.store
    rows = read_predictions(store, "s1").to_pylist()
    assert sorted(r["role"] for r in rows) == ["answer", "shadow"]


def test_concurrent_requests_each_answered_and_recorded_once(serve) -> None:
    with serve(flush_interval_ms=50) as server:
        store = server.server.config.app.service.config.store

        shared = httpx.Client(
            base_url=server.url, timeout=10, limits=httpx.Limits(max_connections=16)
        )

        def call(i: int) -> dict:
            return shared.post("/v1/predictions", json=body(f"c{i}", f"acct-{i % 20}")).json()

        with shared, ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(call, range(300)))
            again = list(pool.map(call, range(0, 300, 10)))
    assert sorted(a["request_id"] for a in answers) == sorted(f"c{i}" for i in range(300))
    assert again == answers[::10]
    rows = read_predictions(store).to_pylist()
    assert len(rows) == 300 and len({r["request_id"] for r in rows}) == 300


def test_slow_service_deadline_504_and_fetch_wait(serve, state) -> None:
    with start_telemetry_process(
        TelemetryConfig(latency_ms=1500, jitter_ms=0, failure_rate=0.0, seed=3)
    ) as slow:
        with serve(
            telemetry_url=slow.url, deadline_ms=150, fetch_wait_ms=1000, flush_interval_ms=50
        ) as s:
            with client(s) as c:
                started = time.monotonic()
                r = c.post("/v1/predictions", json=body("slow-1"))
                assert time.monotonic() - started < 1.0
                assert r.status_code == 504, r.text
                assert r.json()["stage"] == "fetching on-demand service telemetry"
                assert "150 ms deadline" in r.json()["detail"]
                time.sleep(0.2)
                ended = c.get("/v1/predictions/slow-1").json()
                assert ended["timeout"]["reason"].startswith("deadline:")
            store = s.server.config.app.service.config.store
        with (
            serve(telemetry_url=slow.url, deadline_ms=1000, fetch_wait_ms=100) as s,
            client(s) as c,
        ):
            r = c.post("/v1/predictions", json=body("slow-2", "acct-2"))
            assert r.status_code == 200
            assert r.json()["features"]["wifi_rssi_dbm"]["status"] == "defaulted"
            assert r.json()["latency_ms"]["total"] >= 100
            text = c.get("/metrics").text
            assert (
                'streamml_ondemand_fetches_total{outcome="deadline",service="telemetry"} 1.0'
                in text
            )
    assert read_timeouts(store, "slow-1").num_rows == 1


def test_fetched_answers_are_used(serve, telemetry) -> None:
    with serve(telemetry_url=telemetry.url) as s, client(s) as c:
        first = c.post("/v1/predictions", json=body("f1", "acct-3")).json()
        second = c.post("/v1/predictions", json=body("f2", "acct-3")).json()
    assert first["features"]["wifi_rssi_dbm"]["status"] == "fetched"
    assert second["features"]["wifi_rssi_dbm"]["status"] == "fresh"
    assert (
        second["features"]["wifi_rssi_dbm"]["value"] == first["features"]["wifi_rssi_dbm"]["value"]
    )


def test_refuses_to_serve_without_tokens_off_loopback(state, registry) -> None:
    try:
        ServeConfig(state_dir=state, registry_dir=registry.root, host="0.0.0.0")
    except ValueError as exc:
        assert "--tokens" in str(exc)
    else:
        raise AssertionError("expected a refusal")
    config = ServeConfig(state_dir=state, registry_dir=registry.root, port=0)
    assert ServeConfig.from_json(config.to_json()) == config
    with ServerThread(create_app(config)) as s:
        assert orjson.loads(httpx.get(s.url + "/healthz").content) == {"status": "ok"}
