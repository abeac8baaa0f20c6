"""StoredReader: online values and stored answers of planned requests, read in one go."""

from __future__ import annotations

from pathlib import Path

import orjson
from streamml.onnx_models import ensure_demo_registry
from streamml.operators.assembly import Gathered, plan_request
from streamml.operators.gather import StoredReader
from streamml.operators.metadata import load_metadata
from streamml.operators.records import PredictionRequest
from streamml.state.layout import StateLayout
from streamml.state.ondemand import OnDemandReader, OnDemandStore
from streamml.state.online import OnlineStore
from streamml.state.rolling_store import RollingStateStore, create_shard, empty_records
from streamml.state.sharding import shard_of

NOW = 1_790_000_000_000


def test_reads_online_values_and_stored_answers(tmp_path: Path) -> None:
    state = tmp_path / "state"
    layout = StateLayout(shards=2).ensure(state)
    for s in range(2):
        create_shard(StateLayout.shard_dir(state, s))
    shard = shard_of(b"a", 2)
    store = RollingStateStore(StateLayout.shard_dir(state, shard), feature=1, window=24)
    rec = empty_records(1, 24)
    rec["max_bucket"], rec["updated_at"] = NOW // 3_600_000, NOW - 10
    rec["counts"][0][0] = 7
    store.commit([b"a"], rec, {"p": 0})
    store.close()
    answers = OnDemandStore(state, layout=layout)
    body = orjson.dumps({"devices": [{"rssi_dbm": -70.0}]})
    answers.put_many(answers.shard_of(b"a"), "telemetry", [(b"a", NOW - 5, body)])
    answers.close()
    ensure_demo_registry(tmp_path / "models")
    meta = load_metadata(tmp_path / "models")
    reader = StoredReader(OnlineStore(state), OnDemandReader(state))
    items = []
    for account in ("a", "b"):
        request = PredictionRequest(account, "speedtest-triage", account, NOW, {}, "t", 0)
        plan = plan_request(request, meta)
        assert not isinstance(plan, tuple)
        items.append((plan, Gathered()))
    reader.read(items)
    (_, a), (_, b) = items
    assert a.online["signal_errors_24h"].value == 7
    assert b.online["signal_errors_24h"].updated_at is None
    assert a.docs["telemetry"].fetched_at == NOW - 5 and a.docs["telemetry"].present
    assert not b.docs["telemetry"].present
    assert a.read_ms >= 0
