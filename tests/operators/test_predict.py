"""The prediction operator's logic: deadlines, an empty state after them, resume, duplicates."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from streamml.onnx_models import ensure_demo_registry
from streamml.operators.fetch import FetchConfig
from streamml.operators.metadata import load_metadata
from streamml.operators.predict import PredictConfig, _PredictLogic, _SharedFetcher
from streamml.operators.records import PredictionRequest
from streamml.operators.requests import parse_request
from streamml.state.layout import StateLayout
from streamml.state.ondemand import OnDemandStore
from streamml.state.sharding import shard_of

from streamml.telemetry import TelemetryConfig
from streamml.telemetry_process import start_telemetry_process

NOW = 1_790_000_000_000
CONTEXT = {"download_ratio": 0.4, "upload_ratio": 0.9, "latency_ms": 30.0, "packet_loss_pct": 0.5}
TTL_MS = 150


def request(rid: str, account: str) -> PredictionRequest:
    body = {"request_id": rid, "model": "speedtest-triage", "account": account, "ts": NOW}
    parsed = parse_request(orjson.dumps({**body, "context": CONTEXT}), "test", 0)
    assert isinstance(parsed, PredictionRequest)
    return parsed


@pytest.fixture(scope="module")
def slow_service():
    with start_telemetry_process(
        TelemetryConfig(latency_ms=3000, jitter_ms=0, failure_rate=0.0)
    ) as proc:
        yield proc


def make_config(tmp_path: Path, url: str) -> PredictConfig:
    registry = tmp_path / "models"
    ensure_demo_registry(registry)
    layout = StateLayout(shards=1).ensure(tmp_path / "state")
    return PredictConfig(
        state_dir=tmp_path / "state",
        registry_dir=registry,
        layout=layout,
        services=(("telemetry", FetchConfig(url, timeout_ms=5000, max_attempts=1)),),
        request_ttl_ms=TTL_MS,
    )


def ended(outputs) -> list[str]:
    return sorted(p.request_id for out in outputs for p in out.answers())


def test_requests_end_at_their_deadline_and_leave_no_state(tmp_path, slow_service) -> None:
    config = make_config(tmp_path, slow_service.url)
    meta = load_metadata(config.registry_dir)
    logic = _PredictLogic(config, None)
    requests = [request(f"r{i}", f"acct-{i % 3}") for i in range(6)]
    out, _ = logic.on_batch([meta, *requests])
    assert ended(out) == []
    assert len(logic.pending) == 6 and logic.notify_at() is not None
    time.sleep(TTL_MS / 1000 + 0.05)
    out, _ = logic.on_notify()
    assert ended(out) == [r.request_id for r in requests]
    statuses = {f.name: f.status for out_ in out for p in out_.answers() for f in p.features}
    assert statuses["wifi_rssi_dbm"] == "defaulted"
    assert logic.pending == {} and logic.waiting == set() and logic.unplanned == []
    assert logic.notify_at() is None and logic.deadlines == []
    out, _ = logic.on_batch([requests[0]])
    assert [d.reason for o in out for d in o.dead] == ["duplicate_request_id"]
    logic.close()


def test_a_resumed_shard_plans_its_pending_requests_again(tmp_path, slow_service) -> None:
    config = make_config(tmp_path, slow_service.url)
    meta = load_metadata(config.registry_dir)
    first = _PredictLogic(config, None)
    requests = [request(f"r{i}", f"acct-{i}") for i in range(4)]
    first.on_batch([meta, *requests[:2]])
    snapshot = first.snapshot()
    first.close()
    resumed = _PredictLogic(config, snapshot)
    out, _ = resumed.on_batch(requests[2:])
    assert ended(out) == [] and len(resumed.unplanned) == 4
    out, _ = resumed.on_batch([meta])
    assert resumed.unplanned == [] and len(resumed.waiting) == 4
    time.sleep(TTL_MS / 1000 + 0.05)
    out, _ = resumed.on_notify()
    assert ended(out) == ["r0", "r1", "r2", "r3"]
    assert resumed.pending == {}
    resumed.close()


def test_a_shard_resumed_after_its_deadlines_waits_again_for_the_registry(
    tmp_path, slow_service
) -> None:
    config = make_config(tmp_path, slow_service.url)
    meta = load_metadata(config.registry_dir)
    first = _PredictLogic(config, None)
    first.on_batch([meta, request("r0", "acct-0")])
    snapshot = first.snapshot()
    first.close()
    time.sleep(TTL_MS / 1000 + 0.05)
    resumed = _PredictLogic(config, snapshot)
    out, _ = resumed.on_notify()
    assert ended(out) == [] and [t for o in out for t in o.timeouts] == []
    assert "r0" in resumed.pending
    resumed.on_batch([meta])
    time.sleep(TTL_MS / 1000 + 0.05)
    out, _ = resumed.on_notify()
    assert ended(out) == ["r0"] and resumed.pending == {}
    resumed.close()


def test_without_metadata_requests_time_out(tmp_path, slow_service) -> None:
    config = make_config(tmp_path, slow_service.url)
    logic = _PredictLogic(config, None)
    logic.on_batch([request("r0", "acct-0")])
    time.sleep(TTL_MS / 1000 + 0.05)
    out, _ = logic.on_notify()
    assert [(t.request_id, t.reason.split(":")[0]) for o in out for t in o.timeouts] == [
        ("r0", "no_metadata")
    ]
    assert logic.pending == {}
    logic.close()


def test_a_reused_request_id_keeps_its_own_deadline(tmp_path, slow_service) -> None:
    config = make_config(tmp_path, slow_service.url)
    config = PredictConfig(**{**config.__dict__, "dedupe_ids": 0})
    store = OnDemandStore(config.state_dir)
    answer = orjson.dumps({"devices": [{"rssi_dbm": -60, "noise_dbm": -90}]})
    store.put_many(0, "telemetry", [(b"acct-warm", NOW, answer)])
    store.close()
    meta = load_metadata(config.registry_dir)
    logic = _PredictLogic(config, None)
    out, _ = logic.on_batch([meta, request("r0", "acct-warm")])
    assert ended(out) == ["r0"]
    time.sleep(0.1)
    logic.on_batch([request("r0", "acct-cold")])
    assert "r0" in logic.pending
    time.sleep(TTL_MS / 1000 - 0.05)
    out, _ = logic.on_notify()
    assert ended(out) == [] and "r0" in logic.pending
    time.sleep(0.15)
    out, _ = logic.on_notify()
    assert ended(out) == ["r0"] and logic.pending == {}
    logic.close()


def test_the_shared_fetcher_gives_each_shard_its_own_answers() -> None:
    shards = 16
    accounts = ["acct-0", next(f"acct-{i}" for i in range(1, 99) if shard_of(
        f"acct-{i}".encode(), shards) != shard_of(b"acct-0", shards))]  # fmt: skip
    first, second = (shard_of(a.encode(), shards) for a in accounts)
    with start_telemetry_process(
        TelemetryConfig(latency_ms=1, jitter_ms=0, failure_rate=0.0)
    ) as service:
        shared = _SharedFetcher(FetchConfig(service.url, timeout_ms=5000), shards, "crc32")
        try:
            # the second shard's answer completes last, so it is the last one polled
            for done, account in enumerate(accounts, 1):
                shared.submit(account, account)
                deadline = time.time() + 10
                while len(shared.fetcher._core.done) < done:
                    assert time.time() < deadline, "the telemetry service did not answer"
                    shared.fetcher.wait_for_results(0.05)
            assert [r.key for r in shared.poll(first)] == [accounts[0]]
            assert [r.key for r in shared.poll(second)] == [accounts[1]]
        finally:
            shared.fetcher.close()
