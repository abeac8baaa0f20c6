"""The prediction flow as worker processes: kill -9 with recovery, promotion mid-stream."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from streamml.dataflows.predict import PredictFlowConfig, RequestsConfig
from streamml.onnx_models.speedtests import RequestGeneratorConfig, generate_requests
from streamml.operators.sinks import read_stats
from streamml.state.predictions import read_predictions, read_timeouts

from streamml.recovery import ensure_recovery_dir, recovery_args
from tests.predict_support import MODEL, read_lines

NOW = 1_790_000_000_000
FLOW = "streamml.dataflows.predict:flow"


def config_for(tmp: Path, registry, n: int, **kw) -> PredictFlowConfig:
    gen = RequestGeneratorConfig(requests=n, accounts=5000, seed=9, now_ms=NOW, batch_size=256)
    return PredictFlowConfig(
        requests=RequestsConfig(kind="generate", generator=gen),
        state_dir=tmp / "state",
        registry_dir=registry.root,
        predictions_out=tmp / "answers.jsonl",
        timeouts_out=tmp / "timeouts.jsonl",
        stats_path=tmp / "stats.json",
        **kw,
    )


def start(config: PredictFlowConfig, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-P", "-m", "streamml.worker", FLOW, *extra]
    env = {**os.environ, **config.to_env()}
    return subprocess.Popen(cmd, env=env, start_new_session=True)


def answered(config: PredictFlowConfig) -> int:
    stats = read_stats(config.stats_path) if config.stats_path.exists() else None
    return 0 if stats is None else stats["counters"].get("answers", 0)


def all_ids(config: PredictFlowConfig) -> list[str]:
    g = config.requests.generator
    return sorted(r["request_id"] for r in generate_requests(g, 0, 0, g.requests).requests)


def test_kill_9_with_recovery_ends_every_request_once(tmp_path: Path, registry, telemetry) -> None:
    rdir = tmp_path / "recovery"
    config = config_for(tmp_path, registry, 30_000, telemetry_url=telemetry.url, recovery_dir=rdir)
    ensure_recovery_dir(rdir)
    extra = recovery_args(rdir, 1)
    rng = random.Random(4)
    kills = 0
    for _attempt in range(20):
        if config.stats_path.exists():
            config.stats_path.unlink()
        proc = start(config, extra)
        if kills < 3:
            deadline = time.time() + 120
            while answered(config) == 0 and proc.poll() is None and time.time() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.2, 2.5))
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                kills += 1
                continue
        assert proc.wait(timeout=300) == 0
        if kills >= 3:
            break
    assert kills == 3
    ids = all_ids(config)
    timeouts = Counter(r["reason"].split(":")[0] for r in read_timeouts(config.store).to_pylist())
    assert timeouts == {}
    assert read_lines(config.timeouts_out) == []
    stored = read_predictions(config.store).to_pylist()
    assert Counter(r["role"] for r in stored) == {"answer": len(ids)}
    assert sorted(r["request_id"] for r in stored) == ids
    assert sorted(a["request_id"] for a in read_lines(config.predictions_out)) == ids


def test_a_promotion_mid_stream_switches_versions_without_loss(tmp_path: Path, registry) -> None:
    before = registry.revision()
    config = config_for(tmp_path, registry, 40_000)
    proc = start(config, [])
    try:
        deadline = time.time() + 120
        while answered(config) < 2000 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, "the flow ended before the promotion; give it more requests"
        registry.route(MODEL, live="2")
        after = registry.revision()
        assert proc.wait(timeout=300) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    answers = read_lines(config.predictions_out)
    assert sorted(a["request_id"] for a in answers) == all_ids(config)
    versions = Counter((a["metadata_revision"], a["version"]) for a in answers)
    assert set(versions) == {(before, "1"), (after, "2")}, versions
    assert versions[(after, "2")] > 0 and versions[(before, "1")] >= 2000


def test_two_processes_answer_every_request_once(tmp_path: Path, registry, telemetry) -> None:
    from streamml.runner import run_flow_processes

    registry.route(MODEL, split={"1": 0.5, "2": 0.5}, experiment="two", shadow=["3"])
    config = config_for(tmp_path, registry, 4000, telemetry_url=telemetry.url)
    result = run_flow_processes(FLOW, config.to_env(), processes=2)
    assert result.returncode == 0
    ids = all_ids(config)
    assert sorted(a["request_id"] for a in read_lines(config.predictions_out)) == ids
    stored = read_predictions(config.store).to_pylist()
    assert Counter(r["role"] for r in stored) == {"answer": len(ids), "shadow": len(ids)}
    assert {r["variant"] for r in stored} == {"ab:1", "ab:2", "shadow:3"}
