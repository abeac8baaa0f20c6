"""The prediction flow end to end: real registry, ONNX Runtime, RocksDB and HTTP telemetry."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import orjson
from streamml.dataflows.predict import RequestsConfig
from streamml.onnx_models import bundled_contract, select_variants
from streamml.onnx_models.speedtests import RequestGeneratorConfig, generate_requests
from streamml.operators.explain import explain, explain_request
from streamml.operators.scoring import Scorer, ScoringConfig
from streamml.operators.sinks import read_stats
from streamml.state.layout import StateLayout
from streamml.state.ondemand import OnDemandReader, OnDemandStore, values_service
from streamml.state.predictions import read_predictions, read_timeouts

from streamml.telemetry import TelemetryConfig
from streamml.telemetry_process import start_telemetry_process
from tests.predict_support import MODEL, read_lines, run_predict_flow

NOW = 1_790_000_000_000


def generated(n: int, accounts: int, seed: int = 7) -> RequestsConfig:
    gen = RequestGeneratorConfig(requests=n, accounts=accounts, seed=seed, now_ms=NOW)
    return RequestsConfig(kind="generate", generator=gen)


def request_ids(config: RequestsConfig) -> list[str]:
    g = config.generator
    return [r["request_id"] for r in generate_requests(g, 0, 0, g.requests).requests]


def test_every_request_answered_once_with_a_flaky_service_ab_split_and_shadow(
    tmp_path: Path, registry
) -> None:
    routing = registry.route(MODEL, split={"1": 0.7, "2": 0.3}, experiment="exp-1", shadow=["3"])
    requests = generated(1500, 800)
    with start_telemetry_process(
        TelemetryConfig(latency_ms=5, jitter_ms=3, failure_rate=0.4, seed=7)
    ) as flaky:
        config = run_predict_flow(
            tmp_path, registry, requests, telemetry_url=flaky.url, fetch_attempts=2
        )
    ids = request_ids(requests)
    answers = read_lines(config.predictions_out)
    assert sorted(a["request_id"] for a in answers) == sorted(ids)
    assert {a["role"] for a in answers} == {"answer"}
    stored = read_predictions(config.store).to_pylist()
    by_role = Counter(r["role"] for r in stored)
    assert by_role == {"answer": len(ids), "shadow": len(ids)}
    assert sorted(r["request_id"] for r in stored if r["role"] == "answer") == sorted(ids)
    assert {r["variant"] for r in stored if r["role"] == "shadow"} == {"shadow:3"}
    for a in answers:
        version, variant = select_variants(routing, a["account"]).answer
        assert (a["version"], a["variant"]) == (version, variant)
    assert read_timeouts(config.store).num_rows == 0
    counters = read_stats(config.stats_path)["counters"]
    assert counters["fetch.telemetry.failed"] > 0 and counters["fetch.telemetry.ok"] > 0
    statuses = Counter(f["status"] for a in answers for f in a["features"].values())
    assert statuses["fetched"] > 0 and statuses["defaulted"] > 0


def _line(rid: str, account: str, ctx: dict, model: str = MODEL) -> bytes:
    body = {"request_id": rid, "model": model, "account": account, "ts": NOW, "context": ctx}
    return orjson.dumps(body)


CONTEXT = {"download_ratio": 0.4, "upload_ratio": 0.9, "latency_ms": 30.0, "packet_loss_pct": 0.5}


def test_invalid_duplicate_and_incomplete_requests(tmp_path: Path, registry) -> None:
    lines = [
        _line("r1", "acct-1", CONTEXT),
        _line("r1", "acct-1", CONTEXT),
        _line("r2", "acct-2", {k: v for k, v in CONTEXT.items() if k != "latency_ms"}),
        _line("r3", "acct-3", CONTEXT, model="no-such-model"),
        b"{not json",
        _line("r4", "acct-4", {k: v for k, v in CONTEXT.items() if k != "packet_loss_pct"}),
    ]
    path = tmp_path / "requests.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    config = run_predict_flow(tmp_path, registry, RequestsConfig(kind="file", paths=(str(path),)))
    answers = read_lines(config.predictions_out)
    assert sorted(a["request_id"] for a in answers) == ["r1", "r4"]
    r4 = next(a for a in answers if a["request_id"] == "r4")
    assert r4["features"]["packet_loss_pct"] == {
        "value": 0.0,
        "updated_at": None,
        "version": "request",
        "status": "defaulted",
    }
    timeouts = read_lines(config.timeouts_out)
    assert [(t["request_id"], t["missing"], t["reason"]) for t in timeouts] == [
        ("r2", ["latency_ms"], "missing_features")
    ]
    dead = sorted((d["reason"], d["position"]) for d in read_lines(config.dead_letters_out))
    offsets = [0]
    for line in lines[:-1]:
        offsets.append(offsets[-1] + len(line) + 1)
    assert dead == sorted(
        [
            ("duplicate_request_id", offsets[1]),
            ("unknown_model", offsets[3]),
            ("not_json", offsets[4]),
        ]
    )


def test_a_stale_answer_is_fetched_again_and_a_fresh_one_is_not(
    tmp_path: Path, registry, telemetry
) -> None:
    state = tmp_path / "state"
    StateLayout().ensure(state)
    store = OnDemandStore(state)
    doc = {"devices": [{"rssi_dbm": -80.0, "noise_dbm": -90.0}], "modem": {"uptime_h": 5}}
    body = orjson.dumps(doc)
    for account, fetched_at in (("acct-fresh", NOW - 60_000), ("acct-stale", NOW - 7_200_000)):
        store.put_many(
            store.shard_of(account.encode()), "telemetry", [(account.encode(), fetched_at, body)]
        )
    store.close()
    path = tmp_path / "requests.jsonl"
    path.write_bytes(
        _line("a", "acct-fresh", CONTEXT) + b"\n" + _line("b", "acct-stale", CONTEXT) + b"\n"
    )
    config = run_predict_flow(
        tmp_path,
        registry,
        RequestsConfig(kind="file", paths=(str(path),)),
        state_dir=state,
        telemetry_url=telemetry.url,
    )
    answers = {a["request_id"]: a for a in read_lines(config.predictions_out)}
    fresh, stale = answers["a"]["features"], answers["b"]["features"]
    assert fresh["wifi_rssi_dbm"] == {
        "value": -80.0,
        "updated_at": NOW - 60_000,
        "version": "telemetry",
        "status": "fresh",
    }
    assert fresh["node_health"]["status"] == "defaulted"
    assert stale["wifi_rssi_dbm"]["status"] == "fetched"
    assert stale["wifi_rssi_dbm"]["updated_at"] > NOW
    counters = read_stats(config.stats_path)["counters"]
    assert counters["fetch.telemetry.submitted"] == 1 and counters["fetch.telemetry.ok"] == 1
    reader = OnDemandReader(state)
    [(fetched_at, body)] = reader.lookup("telemetry", [b"acct-stale"])
    [(values_at, values)] = reader.lookup(values_service("telemetry"), [b"acct-stale"])
    reader.close()
    assert values_at == fetched_at == stale["wifi_rssi_dbm"]["updated_at"]
    answer = orjson.loads(body)
    expected = {
        spec.source.expression: spec.source.extract(answer)
        for spec in bundled_contract().for_service("telemetry")
    }
    assert orjson.loads(values) == expected
    assert expected["min(devices[].rssi_dbm)"] == stale["wifi_rssi_dbm"]["value"]


def test_a_slow_service_ends_requests_at_their_deadline(tmp_path: Path, registry) -> None:
    requests = generated(40, 40, seed=3)
    with start_telemetry_process(
        TelemetryConfig(latency_ms=1500, jitter_ms=0, failure_rate=0.0, seed=3)
    ) as slow:
        started = time.monotonic()
        config = run_predict_flow(
            tmp_path, registry, requests, telemetry_url=slow.url, request_ttl_ms=150
        )
        assert time.monotonic() - started < 10
    answers = read_lines(config.predictions_out)
    assert sorted(a["request_id"] for a in answers) == sorted(request_ids(requests))
    for a in answers:
        assert a["latency_ms"]["total"] >= 150
        assert a["features"]["wifi_rssi_dbm"]["status"] == "defaulted"
    assert read_stats(config.stats_path)["counters"]["deadline_reached"] == 40


def test_explain_reproduces_every_stored_prediction(tmp_path: Path, registry, telemetry) -> None:
    registry.route(MODEL, split={"1": 0.5, "2": 0.5}, experiment="exp-2", shadow=["3"])
    requests = generated(300, 200, seed=5)
    config = run_predict_flow(tmp_path, registry, requests, telemetry_url=telemetry.url)
    stored = read_predictions(config.store).to_pylist()
    assert len(stored) == 600
    scorer = Scorer(ScoringConfig(registry_dir=registry.root))
    explained = [explain(row, registry, scorer=scorer) for row in stored]
    assert all(e.reproduced for e in explained), [e.detail for e in explained if not e.reproduced]
    first = request_ids(requests)[0]
    assert [e.role for e in explain_request(config.store, first, registry)] == ["answer", "shadow"]


def test_requests_from_kafka_and_answers_to_a_topic(
    tmp_path: Path, registry, telemetry, kafka_broker, make_topic
) -> None:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    requests_topic, answers_topic = make_topic(3), make_topic(1)
    g = RequestGeneratorConfig(requests=600, accounts=300, seed=4, now_ms=NOW)
    lines = [orjson.dumps(r) for r in generate_requests(g, 0, 0, g.requests).requests]
    lines.append(b"{broken")
    producer = KafkaProducer(bootstrap_servers=kafka_broker, acks="all")
    for line in lines:
        producer.send(requests_topic, line)
    producer.flush()
    producer.close()
    registry.route(MODEL, live="1", shadow=["3"])
    config = run_predict_flow(
        tmp_path,
        registry,
        RequestsConfig(kind="kafka"),
        telemetry_url=telemetry.url,
        kafka_env=(
            ("STREAMML_KAFKA_BROKERS", kafka_broker),
            ("STREAMML_KAFKA_TOPIC", requests_topic),
            ("STREAMML_KAFKA_START", "earliest"),
            ("STREAMML_KAFKA_STOP_AT_END", "1"),
            ("STREAMML_KAFKA_PREDICTIONS_TOPIC", answers_topic),
        ),
    )
    consumer = KafkaConsumer(bootstrap_servers=kafka_broker, enable_auto_commit=False)
    consumer.assign([TopicPartition(answers_topic, 0)])
    consumer.seek_to_beginning()
    records = []
    deadline = time.time() + 30
    while len(records) < g.requests and time.time() < deadline:
        for batch in consumer.poll(timeout_ms=200).values():
            records += batch
    consumer.close()
    ids = sorted(dict(r.headers)["request_id"].decode() for r in records)
    assert ids == sorted(orjson.loads(line)["request_id"] for line in lines[:-1])
    bodies = [orjson.loads(r.value) for r in records]
    assert {b["role"] for b in bodies} == {"answer"} and {b["version"] for b in bodies} == {"1"}
    assert all(r.key == orjson.loads(r.value)["account"].encode() for r in records)
    assert [d["reason"] for d in read_lines(config.dead_letters_out)] == ["not_json"]
    stored = read_predictions(config.store)
    assert Counter(stored["role"].to_pylist()) == {"answer": 600, "shadow": 600}
