"""The outcome join flow end to end: predictions scored by the real flow, outcomes from the
generator's hidden truth, the join on RocksDB, the outcome store; also under kill -9."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from streamml.dataflows.outcomes import OutcomesFlowConfig, build_flow
from streamml.dataflows.predict import RequestsConfig
from streamml.onnx_models.speedtests import (
    OutcomeConfig,
    RequestGeneratorConfig,
    generate_outcomes,
    iter_truth,
)
from streamml.operators.sinks import read_stats
from streamml.state.errors import RefusedError
from streamml.state.outcomes import read_outcomes
from streamml.state.predictions import read_predictions

from streamml.recovery import ensure_recovery_dir, recovery_args
from tests.predict_support import MODEL, read_lines, run_outcome_flow, run_predict_flow

NOW = 1_790_000_000_000
DAY = 86_400_000
TTL = 2 * DAY


def predicted(
    tmp: Path, registry, n: int, accounts: int = 600
) -> tuple[Path, RequestGeneratorConfig]:
    """Score `n` generated requests with v1 live and v3 as a shadow; return the store."""
    registry.route(MODEL, shadow=["3"])
    gen = RequestGeneratorConfig(
        requests=n, accounts=accounts, seed=5, now_ms=NOW, span_ms=6 * 3_600_000
    )
    config = run_predict_flow(tmp, registry, RequestsConfig(kind="generate", generator=gen))
    return config.store, gen


def write_outcomes(path: Path, outcomes: list[dict], extra: list[bytes] = ()) -> Path:
    lines = [orjson.dumps(o) for o in outcomes] + list(extra)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def oracle(store: Path, outcomes: list[dict], ttl: int):
    """Brute force over the stored rows and the outcome lines."""
    first: dict[str, dict] = {}
    for o in outcomes:
        first.setdefault(o["request_id"], o)
    matched, unresolved = Counter(), Counter()
    hit = set()
    for row in read_predictions(store).to_pylist():
        ts = int(row["request_ts"].timestamp() * 1000)
        o = first.get(row["request_id"])
        if o is not None and ts <= o["observed_at"] <= ts + ttl:
            matched[(row["request_id"], row["variant"], row["label"], o["outcome"])] += 1
            hit.add(row["request_id"])
        else:
            unresolved[(row["request_id"], row["variant"])] += 1
    orphans = Counter(rid for rid in first if rid not in hit)
    return matched, unresolved, orphans


def got(config: OutcomesFlowConfig):
    rows = read_outcomes(config.prediction_store).to_pylist()
    matched = Counter((r["request_id"], r["variant"], r["label"], r["outcome"]) for r in rows)
    reports = read_lines(config.reports)
    unresolved = Counter(
        (r["request_id"], r["variant"]) for r in reports if r["kind"] == "unresolved"
    )
    orphans = Counter(r["request_id"] for r in reports if r["kind"] == "orphan")
    return matched, unresolved, orphans


def test_outcomes_join_every_variant_and_report_the_rest(tmp_path: Path, registry) -> None:
    store, gen = predicted(tmp_path, registry, 1500)
    outcomes = generate_outcomes(gen, OutcomeConfig(max_delay_ms=3 * DAY, missing_rate=0.2))
    truth = {t.request_id: t.label for t in iter_truth(gen)}
    assert all(o["outcome"] == truth[o["request_id"]] for o in outcomes)
    strays = [
        {"request_id": "never-asked", "outcome": "modem", "observed_at": NOW},
        {**outcomes[0], "outcome": "network"},  # a second outcome for a request
    ]
    junk = [b"{not json", b'{"request_id": "x", "outcome": "fridge", "observed_at": 1}']
    path = write_outcomes(tmp_path / "outcomes.jsonl", outcomes + strays, junk)
    config = OutcomesFlowConfig(
        prediction_store=store,
        paths=(str(path),),
        outcome_ttl_ms=TTL,
        drain=True,
        dead_letters_out=tmp_path / "outcome-dead.jsonl",
        stats_path=tmp_path / "outcome-stats.json",
    )
    run_outcome_flow(config)
    want = oracle(store, outcomes + strays, TTL)
    assert got(config) == want
    matched, unresolved, orphans = want
    # Both variants of most requests matched, some too late for the TTL, some never observed.
    assert {v for _, v, _, _ in matched} == {"live", "shadow:3"}
    assert sum(matched.values()) > 1000 and sum(unresolved.values()) > 300
    assert "never-asked" in orphans
    for rid, _, _, outcome in matched:
        assert outcome == truth[rid]
    dead = Counter(d["reason"] for d in read_lines(config.dead_letters_out))
    assert dead == {"duplicate_outcome": 1, "not_json": 1, "unknown_outcome": 1}
    counters = read_stats(config.stats_path)["counters"]
    assert counters["matched"] == sum(matched.values())
    assert "late.outcomes" not in counters and "late.predictions" not in counters


def test_a_second_run_resolves_what_waited(tmp_path: Path, registry) -> None:
    store, gen = predicted(tmp_path, registry, 400)
    outcomes = generate_outcomes(gen, OutcomeConfig(max_delay_ms=DAY, missing_rate=0.0))
    half = len(outcomes) // 2
    config = OutcomesFlowConfig(
        prediction_store=store, paths=(str(write_outcomes(tmp_path / "a.jsonl", outcomes[:half])),)
    )
    run_outcome_flow(config)
    first = read_outcomes(store).num_rows
    assert 0 < first < 2 * len(outcomes)
    # The second run resumes where the first ended: each variant is read and matched once.
    second = OutcomesFlowConfig(
        prediction_store=store,
        paths=(str(write_outcomes(tmp_path / "b.jsonl", outcomes[half:])),),
        drain=True,
    )
    run_outcome_flow(second)
    rows = read_outcomes(store).to_pylist()
    assert len(rows) == len({(r["request_id"], r["variant"]) for r in rows})
    assert len(rows) == 2 * len(outcomes)
    # The second run resumed after what the first read: nothing is left waiting or reported.
    assert [r for r in read_lines(second.reports) if r["kind"] == "unresolved"] == []


def test_the_join_state_refuses_other_shards(tmp_path: Path, registry) -> None:
    store, gen = predicted(tmp_path, registry, 50)
    path = write_outcomes(tmp_path / "o.jsonl", generate_outcomes(gen))
    run_outcome_flow(OutcomesFlowConfig(prediction_store=store, paths=(str(path),)))
    with pytest.raises(RefusedError, match="shards"):
        build_flow(OutcomesFlowConfig(prediction_store=store, paths=(str(path),), shards=4))


def test_kill_9_with_recovery_matches_each_variant_once(tmp_path: Path, registry) -> None:
    store, gen = predicted(tmp_path, registry, 6000, accounts=3000)
    outcomes = generate_outcomes(gen, OutcomeConfig(max_delay_ms=DAY, missing_rate=0.1))
    path = write_outcomes(tmp_path / "outcomes.jsonl", outcomes)
    base = {"paths": (str(path),), "outcome_ttl_ms": TTL, "drain": True}
    clean = OutcomesFlowConfig(
        prediction_store=store, join_dir=tmp_path / "clean-join",
        reports_out=tmp_path / "clean-reports.jsonl", **base,
    )  # fmt: skip
    crashed_store = tmp_path / "crashed"
    crashed_store.mkdir()
    (crashed_store / "predictions").symlink_to(store / "predictions")
    rdir = tmp_path / "recovery"
    crashed = OutcomesFlowConfig(
        prediction_store=crashed_store, stats_path=tmp_path / "stats.json",
        recovery_dir=rdir, **base,
    )  # fmt: skip
    run_outcome_flow(clean)
    ensure_recovery_dir(rdir)
    extra = recovery_args(rdir, 1)
    rng = random.Random(3)
    kills = 0
    env = {**os.environ, **crashed.to_env()}
    cmd = [sys.executable, "-P", "-m", "streamml.worker", "streamml.dataflows.outcomes:flow"]
    for _attempt in range(12):
        proc = subprocess.Popen([*cmd, *extra], env=env, start_new_session=True)
        if kills < 3:
            time.sleep(rng.uniform(0.5, 2.0))
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                kills += 1
                continue
        assert proc.wait(timeout=300) == 0
        break
    assert kills >= 1
    assert got(crashed) == got(clean)
    assert sum(got(clean)[0].values()) > 5000


def test_outcomes_from_kafka(tmp_path: Path, registry, kafka_broker, make_topic) -> None:
    from kafka import KafkaProducer

    store, gen = predicted(tmp_path, registry, 500)
    outcomes = generate_outcomes(gen, OutcomeConfig(max_delay_ms=DAY, missing_rate=0.1))
    topic = make_topic(3)
    producer = KafkaProducer(bootstrap_servers=kafka_broker, acks="all")
    for o in outcomes:
        producer.send(topic, orjson.dumps(o), key=o["request_id"].encode())
    producer.send(topic, b"{broken", key=b"x")
    producer.flush()
    producer.close()
    config = OutcomesFlowConfig(
        prediction_store=store,
        source="kafka",
        outcome_ttl_ms=TTL,
        drain=True,
        dead_letters_out=tmp_path / "dead.jsonl",
        kafka_env=(
            ("STREAMML_KAFKA_BROKERS", kafka_broker),
            ("STREAMML_KAFKA_TOPIC", topic),
            ("STREAMML_KAFKA_START", "earliest"),
            ("STREAMML_KAFKA_STOP_AT_END", "1"),
        ),
    )
    run_outcome_flow(config)
    assert got(config) == oracle(store, outcomes, TTL)
    assert [d["reason"] for d in read_lines(config.dead_letters_out)] == ["not_json"]


def test_outcomes_from_the_generator(tmp_path: Path, registry) -> None:
    store, gen = predicted(tmp_path, registry, 300)
    config = OutcomesFlowConfig(prediction_store=store, source="generate", requests=gen, drain=True)
    run_outcome_flow(config)
    want = oracle(store, generate_outcomes(gen, OutcomeConfig()), 30 * DAY)
    assert got(config) == want and sum(want[0].values()) > 400
