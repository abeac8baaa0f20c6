"""The run counters file: when a run started, and the counters summed."""

from __future__ import annotations

import time

import orjson
from streamml.operators.sinks import StatsSink


def test_started_at_is_when_the_flow_was_built(tmp_path):
    path = tmp_path / "stats.json"
    before = time.time()
    sink = StatsSink(path)
    assert before <= orjson.loads(path.read_bytes())["started_at"] <= time.time()
    time.sleep(0.05)
    # Bytewax builds the partition when the first item arrives, after the first batch was read.
    part = sink.build_part("stats-out", "stats", None)
    part.write_batch([{"read": 3}, {"read": 2, "dead": 1}])
    part.close()
    body = orjson.loads(path.read_bytes())
    assert body["started_at"] == sink.started
    assert body["updated_at"] - body["started_at"] >= 0.05
    assert body["counters"] == {"read": 5, "dead": 1}
    assert body["finished"] is True
