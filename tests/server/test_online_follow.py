"""The service reads the online store while a flow writes it: never blocked, sees writes fast."""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import orjson
from streamml.state.layout import StateLayout
from streamml.state.rolling_store import RollingStateStore, empty_records
from streamml.state.sharding import shard_of

from tests.server.conftest import HOUR, NOW, make_state

FEATURE = "signal_errors_24h"


def test_reads_while_the_error_count_flow_writes(tmp_path: Path, serve) -> None:
    state = make_state(tmp_path / "live-state", values={})
    counts = {f"live-{i}": 200 * (i + 1) for i in range(12)}
    events = tmp_path / "events.jsonl"
    with events.open("wb") as fh:
        for j in range(max(counts.values())):
            for account, n in counts.items():
                if j < n:
                    fh.write(orjson.dumps({"account": account, "ts": NOW - 1000 - j}) + b"\n")
    cmd = [sys.executable, "-m", "streamml.cli", "run", "error-count", "--input", str(events)]
    cmd += ["--state-dir", str(state), "--shards", "2", "--no-history"]
    seen: dict[str, list[int]] = {a: [] for a in counts}
    errors: list[str] = []
    stop = threading.Event()
    with serve(state_dir=state) as server:

        def read() -> None:
            with httpx.Client(base_url=server.url, timeout=5) as c:
                while not stop.is_set():
                    for account in counts:
                        r = c.get(f"/v1/features/{account}", params={"as_of": NOW})
                        if r.status_code != 200:
                            errors.append(r.text)
                        else:
                            v = r.json()["features"][FEATURE]["value"]
                            seen[account].append(v or 0)

        readers = [threading.Thread(target=read) for _ in range(2)]
        for t in readers:
            t.start()
        flow = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        finished = time.monotonic()
        assert flow.returncode == 0, flow.stderr
        with httpx.Client(base_url=server.url) as c:
            while time.monotonic() - finished < 5:
                got = c.post(
                    "/v1/features:batch-get", json={"entities": list(counts), "as_of": NOW}
                ).json()
                values = {x["entity_key"]: x["features"][FEATURE]["value"] for x in got["results"]}
                if values == counts:
                    break
                time.sleep(0.005)
        caught_up_ms = (time.monotonic() - finished) * 1000
        stop.set()
        for t in readers:
            t.join()
    assert values == counts
    assert not errors, errors[:3]
    assert sum(len(v) for v in seen.values()) > 100
    for account, values_seen in seen.items():
        assert values_seen == sorted(values_seen), account  # never goes back
    assert caught_up_ms < 1000


def test_new_values_are_visible_within_100_ms(serve) -> None:
    with serve(online_refresh_ms=20) as server:
        state = server.server.config.app.service.config.state_dir
        layout = StateLayout.read(state)
        shard = shard_of(b"vis", layout.shards)
        writer = RollingStateStore(
            StateLayout.shard_dir(state, shard), feature=layout.feature_id, window=24
        )
        delays = []
        with httpx.Client(base_url=server.url) as c:
            for k in range(1, 31):
                rec = empty_records(1, 24)
                rec["max_bucket"] = NOW // HOUR
                rec["updated_at"] = NOW - 1000
                rec["counts"][0][0] = k
                writer.commit([b"vis"], rec, {"vis": k})
                written = time.perf_counter()
                while time.perf_counter() - written < 2:
                    r = c.get("/v1/features/vis", params={"as_of": NOW}).json()
                    if r["features"][FEATURE]["value"] == k:
                        delays.append((time.perf_counter() - written) * 1000)
                        break
                time.sleep(0.013 * (k % 3))
        writer.close()
    assert len(delays) == 30
    p50, worst = statistics.median(delays), max(delays)
    print(f"visibility delay: p50 {p50:.1f} ms, max {worst:.1f} ms over {len(delays)} writes")
    assert p50 <= 100 and worst <= 250, (p50, worst)
