"""Crash recovery: kill -9 the flow at random moments, resume, and lose or double nothing."""

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import orjson
from streamml.dataflows.error_count import ErrorCountConfig, SourceConfig
from streamml.operators.sources import GeneratorConfig
from streamml.state.history import read_history
from streamml.state.layout import StateLayout
from streamml.state.rolling_store import RollingStateStore

from streamml.generate_cli import write_events
from streamml.recovery import ensure_recovery_dir, recovery_args

ROOT = Path(__file__).resolve().parents[2]
KILLS = 5
# Kill moments, seconds after the flow starts, taken in turn: before the first snapshot (1 s),
# then soon after the first one is committed. A run resumes from its last committed snapshot, so
# five kills advance it by about two snapshots of input and the input outlasts them. The file
# source reads 16 MiB chunks, which delays its first commit; Kafka batches are small.
FILE_KILL_WINDOWS = [(0.0, 0.3), (1.0, 1.5)]
KAFKA_KILL_WINDOWS = [(0.0, 0.2), (0.9, 1.3)]


def flow_cmd(extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "bytewax.run", "streamml.dataflows.error_count:flow", *extra]


def env_for(config: ErrorCountConfig) -> dict[str, str]:
    return {**os.environ, **config.to_env()}


def config_for(tmp: Path, name: str, source: SourceConfig, recovery: bool, kafka_env=()):
    return ErrorCountConfig(
        source=source,
        state_dir=tmp / name / "state",
        layout=StateLayout(shards=4),
        threshold=300,
        alerts_out=tmp / name / "alerts.jsonl",
        history_dir=tmp / name / "history",
        stats_path=tmp / name / "stats.json",
        recovery_dir=tmp / name / "recovery" if recovery else None,
        kafka_env=kafka_env,
    )


def run_clean(config: ErrorCountConfig) -> None:
    subprocess.run(flow_cmd([]), env=env_for(config), check=True, timeout=600)


def started(stats: Path) -> bool:
    """Whether the flow has read something (the stats file exists from the start)."""
    try:
        return orjson.loads(stats.read_bytes())["counters"].get("read", 0) > 0
    except (FileNotFoundError, orjson.JSONDecodeError):
        return False


def run_with_kills(config: ErrorCountConfig, seed: int, windows: list[tuple[float, float]]) -> int:
    """Kill the flow KILLS times, at a random moment of each attempt's window, then let it end."""
    rng = random.Random(seed)
    rdir = config.recovery_dir
    ensure_recovery_dir(rdir)
    args = recovery_args(rdir, 1)
    kills = 0
    for _attempt in range(40):
        stats = config.stats_path
        if stats.exists():
            stats.unlink()
        proc = subprocess.Popen(flow_cmd(args), env=env_for(config))
        if kills < KILLS:
            deadline = time.time() + 120
            while not started(stats) and proc.poll() is None and time.time() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(*windows[kills % len(windows)]))
            if proc.poll() is None:
                proc.kill()
                proc.wait()
                kills += 1
                continue
        assert proc.wait(timeout=600) == 0
        return kills
    raise AssertionError("the flow did not finish")


def final_state(config: ErrorCountConfig):
    records = {}
    for shard in range(config.layout.shards):
        store = RollingStateStore(
            StateLayout.shard_dir(config.state_dir, shard), feature=1, window=24, read_only=True
        )
        for account, rec in store.iter_records():
            records[account] = (
                int(rec["max_bucket"]),
                int(rec["updated_at"]),
                int(rec["flags"]),
                tuple(rec["counts"].tolist()),
            )
        store.close()
    return records


def alerts(config: ErrorCountConfig) -> list[str]:
    return [orjson.loads(x)["id"] for x in config.alerts_out.read_bytes().splitlines()]


def history(config: ErrorCountConfig):
    t = read_history(config.history_dir)
    return sorted(
        zip(
            t.column("account").to_pylist(),
            t.column("event_time").to_pylist(),
            t.column("value").to_pylist(),
            strict=True,
        )
    )


def assert_same(clean: ErrorCountConfig, crashed: ErrorCountConfig) -> None:
    a_clean, a_crashed = alerts(clean), alerts(crashed)
    assert a_clean, "the input should raise alerts"
    assert sorted(a_crashed) == sorted(a_clean)  # exactly once in the file: no repeats
    s_clean, s_crashed = final_state(clean), final_state(crashed)
    assert len(s_clean) > 100
    assert s_crashed == s_clean
    assert history(crashed) == history(clean)


def test_file_source_survives_kill_9(tmp_path):
    [path] = write_events(
        tmp_path / "errors.csv",
        GeneratorConfig(events=3_000_000, accounts=2_000, seed=3),
        fmt="csv",
        junk_rate=0.0001,
    )
    source = SourceConfig(kind="file", paths=(str(path),))
    clean = config_for(tmp_path, "clean", source, recovery=False)
    run_clean(clean)
    crashed = config_for(tmp_path, "crashed", source, recovery=True)
    kills = run_with_kills(crashed, seed=42, windows=FILE_KILL_WINDOWS)
    assert kills >= KILLS
    assert_same(clean, crashed)
    # The last run resumed from a snapshot, not from the start, and found state already applied.
    last = orjson.loads(crashed.stats_path.read_bytes())["counters"]
    total = orjson.loads(clean.stats_path.read_bytes())["counters"]["read"]
    assert last.get("read", 0) < total


def test_kafka_source_survives_kill_9(tmp_path, kafka_broker, make_topic):
    from kafka import KafkaProducer
    from streamml.operators.sources import generate_events

    from tests.dataflows.test_error_count_kafka import read_topic

    topic = make_topic(3)
    gen = GeneratorConfig(events=360_000, accounts=1_500, seed=9, partitions=1)
    events = generate_events(gen, 0)
    producer = KafkaProducer(
        bootstrap_servers=kafka_broker, acks="all", linger_ms=20, batch_size=1 << 20
    )
    for account, ts in zip(events.accounts.to_pylist(), events.ts.tolist(), strict=True):
        producer.send(topic, key=account, value=b'{"account": "%s", "ts": %d}' % (account, ts))
    producer.flush()
    producer.close()

    def kafka_env(alerts_topic: str):
        return (
            ("STREAMML_KAFKA_ALERTS_TOPIC", alerts_topic),
            ("STREAMML_KAFKA_BROKERS", kafka_broker),
            ("STREAMML_KAFKA_STOP_AT_END", "1"),
            ("STREAMML_KAFKA_TOPIC", topic),
        )

    source = SourceConfig(kind="kafka")
    clean_topic, crashed_topic = make_topic(1), make_topic(1)
    clean = config_for(tmp_path, "clean", source, False, kafka_env(clean_topic))
    run_clean(clean)
    crashed = config_for(tmp_path, "crashed", source, True, kafka_env(crashed_topic))
    kills = run_with_kills(crashed, seed=7, windows=KAFKA_KILL_WINDOWS)
    assert kills >= KILLS
    assert_same(clean, crashed)
    # The topic is written at least once: readers drop repeats by id.
    ids = {orjson.loads(r.value)["id"] for r in read_topic(kafka_broker, crashed_topic)}
    assert ids == set(alerts(clean))
    last = orjson.loads(crashed.stats_path.read_bytes())["counters"]
    assert last.get("read", 0) < len(events.ts)
