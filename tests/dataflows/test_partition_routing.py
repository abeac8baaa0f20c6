"""Partition routing: input partitioned by account is counted with no shard batch crossing
processes, against the brute-force oracle, and a mismatched input is refused."""

import csv
import random
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pytest
from kafka import KafkaProducer
from kafka.partitioner.default import murmur2
from streamml.operators.records import EventBatch
from streamml.operators.routing import key_on_worker, worker_of_key
from streamml.operators.shard import split_by_shard
from streamml.operators.sources import GeneratorConfig
from streamml.state.errors import RefusedError
from streamml.state.layout import StateLayout
from streamml.state.sharding import murmur2_account, murmur2_many, shard_of

from streamml.generate import write_events
from tests.oracle import RollingOracle
from tests.streamml.test_cli import streamml

THRESHOLD = 150


def kafka_partition(account: bytes, partitions: int) -> int:
    return (murmur2(account) & 0x7FFFFFFF) % partitions


def test_murmur2_is_kafkas_default_partitioner_hash():
    rng = random.Random(5)
    accounts = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 60))) for _ in range(500)]
    accounts += [f"acct-{i:08d}".encode() for i in range(500)]
    expected = [murmur2(a) & 0x7FFFFFFF for a in accounts]
    assert murmur2_many(pa.array(accounts, pa.binary())).tolist() == expected
    assert [murmur2_account(a) for a in accounts] == expected


def test_murmur2_shard_modulo_partitions_is_the_kafka_partition():
    for i in range(2000):
        account = f"acct-{i:08d}".encode()
        shard = shard_of(account, 16, "murmur2")
        for partitions in (1, 2, 4, 8, 16):
            assert shard % partitions == kafka_partition(account, partitions)


def test_key_on_worker_routes_to_the_worker():
    for workers in (1, 2, 3, 4, 8):
        for shard in range(64):
            for worker in range(workers):
                key = key_on_worker(shard, worker, workers)
                assert worker_of_key(key, workers) == worker
                assert key.startswith(f"shard-{shard:03d}")
    assert key_on_worker(5, 0, 1) == "shard-005"


def _batch(partition: str, accounts: list[str], through: int) -> EventBatch:
    n = len(accounts)
    return EventBatch(
        partition,
        pa.array([a.encode() for a in accounts], pa.binary()),
        np.arange(n, dtype=np.int64) * 1000,
        np.arange(n, dtype=np.int64),
        through=through,
    )


def test_split_with_owner_feeds_only_the_partitions_shards():
    accounts = [f"acct-{i:08d}" for i in range(400)]
    mine = [a for a in accounts if kafka_partition(a.encode(), 4) == 1]
    out = split_by_shard(_batch("p", mine, 1000), 16, shard_hash="murmur2", owner=(1, 4))
    assert sorted(b.shard for _k, b in out) == [1, 5, 9, 13]
    assert sum(len(b) for _k, b in out) == len(mine)
    empty = split_by_shard(_batch("p", [], 1000), 16, shard_hash="murmur2", owner=(1, 4))
    assert sorted(b.shard for _k, b in empty) == [1, 5, 9, 13]


def test_split_refuses_an_account_on_another_partition():
    accounts = [f"acct-{i:08d}" for i in range(400)]
    wrong = next(a for a in accounts if kafka_partition(a.encode(), 4) == 2)
    with pytest.raises(RefusedError, match="not partitioned by Kafka's default key partitioner"):
        split_by_shard(_batch("p", [wrong], 10), 16, shard_hash="murmur2", owner=(1, 4))


def test_generate_by_key_puts_each_account_in_its_kafka_partition(tmp_path):
    paths = write_events(
        tmp_path / "e.csv",
        GeneratorConfig(events=20_000, accounts=500, seed=3),
        fmt="csv",
        files=4,
        by_key=True,
    )
    total = 0
    for i, path in enumerate(paths):
        with open(path) as f:
            rows = list(csv.DictReader(f))
        total += len(rows)
        assert rows
        assert {kafka_partition(r["account"].encode(), 4) for r in rows} == {i}
    assert total == 20_000


def oracle_of_files(paths: list[Path]) -> tuple[RollingOracle, list[tuple[str, int, int]]]:
    """The oracle over the files, each in its order (each account lives in one file)."""
    oracle = RollingOracle(threshold=THRESHOLD)
    fired = []
    for path in paths:
        with open(path) as f:
            for row in csv.DictReader(f):
                _kind, value, fire = oracle.apply(row["account"], int(row["ts"]))
                if fire:
                    fired.append((row["account"], int(row["ts"]), value))
    return oracle, fired


def assert_matches_oracle(state: Path, alerts: Path, oracle: RollingOracle, fired) -> None:
    got = sorted(
        (a["account"], a["ts"], a["value"])
        for a in map(orjson.loads, alerts.read_bytes().splitlines())
    )
    assert got == sorted(fired)
    assert fired
    as_of = max(oracle.max_bucket.values()) * 3_600_000
    accounts = sorted(oracle.max_bucket)
    out = streamml(
        "features", "get", *accounts, "--state-dir", str(state), "--as-of", str(as_of), "--json"
    )
    rows = [orjson.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == len(accounts)
    for row in rows:
        feature = row["features"]["signal_errors_24h"]
        assert feature["status"] != "missing", row["account"]
        assert feature["value"] == oracle.value_as_of(row["account"], as_of), row["account"]


def run_files(tmp_path: Path, name: str, paths, processes: int, routing: str, shard_hash: str):
    state, alerts = tmp_path / name / "state", tmp_path / name / "alerts.jsonl"
    out = streamml(
        "run",
        "error-count",
        "--source",
        "file",
        *[x for p in paths for x in ("--input", str(p))],
        "--state-dir",
        str(state),
        "--threshold",
        str(THRESHOLD),
        "--shards",
        "8",
        "--shard-hash",
        shard_hash,
        "--routing",
        routing,
        "--processes",
        str(processes),
        "--alerts-out",
        str(alerts),
        "--no-history",
        "--json",
    )
    return state, alerts, orjson.loads(out.stdout)["counters"]


@pytest.fixture(scope="module")
def keyed_files(tmp_path_factory) -> list[Path]:
    return write_events(
        tmp_path_factory.mktemp("keyed") / "errors.csv",
        GeneratorConfig(events=120_000, accounts=400, seed=21),
        fmt="csv",
        files=2,
        by_key=True,
    )


@pytest.mark.parametrize("processes", [1, 2])
def test_files_partition_routing_matches_oracle_with_no_crossing(tmp_path, keyed_files, processes):
    oracle, fired = oracle_of_files(keyed_files)
    state, alerts, counters = run_files(
        tmp_path, "run", keyed_files, processes, "partition", "murmur2"
    )
    assert counters["read"] == 120_000
    assert counters.get("crossed_batches", 0) == 0
    assert_matches_oracle(state, alerts, oracle, fired)
    assert StateLayout.read(state).shard_hash == "murmur2"


def test_exchange_routing_of_the_same_files_crosses_processes(tmp_path, keyed_files):
    oracle, fired = oracle_of_files(keyed_files)
    state, alerts, counters = run_files(tmp_path, "run", keyed_files, 2, "exchange", "murmur2")
    assert counters["crossed_batches"] > 0
    assert counters["crossed_events"] > 0
    assert_matches_oracle(state, alerts, oracle, fired)


def test_files_not_partitioned_by_key_are_refused(tmp_path):
    paths = write_events(
        tmp_path / "errors.csv",
        GeneratorConfig(events=20_000, accounts=300, seed=4),
        fmt="csv",
        files=2,
    )
    out = streamml(
        "run",
        "error-count",
        "--source",
        "file",
        *[x for p in paths for x in ("--input", str(p))],
        "--state-dir",
        str(tmp_path / "state"),
        "--shard-hash",
        "murmur2",
        "--routing",
        "partition",
        "--no-history",
        check=False,
    )
    assert out.returncode == 2
    assert "not partitioned by Kafka's default key partitioner" in out.stderr


def test_partition_routing_needs_a_murmur2_state_dir(tmp_path, keyed_files):
    out = streamml(
        "run",
        "error-count",
        "--source",
        "file",
        *[x for p in keyed_files for x in ("--input", str(p))],
        "--state-dir",
        str(tmp_path / "state"),
        "--routing",
        "partition",
        "--no-history",
        check=False,
    )
    assert out.returncode == 2
    assert "--shard-hash murmur2" in out.stderr


def produce_keyed(bootstrap: str, topic: str, seed: int, events: int, accounts: int) -> list:
    rng = random.Random(seed)
    names = [f"acct-{i:05d}" for i in range(accounts)]
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    sent = []
    for i in range(events):
        account = rng.choice(names[:8] if rng.random() < 0.5 else names)
        ts = 3_600_000 * (i // 400) + rng.randint(-7_200_000, 3_600_000)
        ts = max(ts, 0) if rng.random() > 0.01 else max(ts - 30 * 3_600_000, 0)
        producer.send(
            topic, key=account.encode(), value=orjson.dumps({"account": account, "ts": ts})
        )
        sent.append((account, ts))
    producer.flush()
    producer.close()
    return sent


@pytest.mark.parametrize("processes", [1, 2])
def test_kafka_partition_routing_matches_oracle_with_no_crossing(
    kafka_broker, make_topic, tmp_path, processes
):
    topic = make_topic(4)
    sent = produce_keyed(kafka_broker, topic, seed=processes, events=20_000, accounts=200)
    oracle = RollingOracle(threshold=THRESHOLD)
    fired = []
    for account, ts in sent:  # one producer, keyed: each account's order is its send order
        _kind, value, fire = oracle.apply(account, ts)
        if fire:
            fired.append((account, ts, value))
    state, alerts = tmp_path / "state", tmp_path / "alerts.jsonl"
    out = streamml(
        "run",
        "error-count",
        "--source",
        "kafka",
        "--brokers",
        kafka_broker,
        "--topic",
        topic,
        "--stop-at-end",
        "--state-dir",
        str(state),
        "--threshold",
        str(THRESHOLD),
        "--shard-hash",
        "murmur2",
        "--routing",
        "partition",
        "--processes",
        str(processes),
        "--alerts-out",
        str(alerts),
        "--no-history",
        "--json",
    )
    counters = orjson.loads(out.stdout)["counters"]
    assert counters["read"] == len(sent)
    assert counters.get("crossed_batches", 0) == 0
    assert_matches_oracle(state, alerts, oracle, fired)


def test_two_processes_with_partition_routing_survive_kill_9(tmp_path, monkeypatch):
    from dataclasses import replace

    from tests.dataflows import test_recovery as rec

    # the workers started as the CLI starts them (`streamml.worker` tells each its process id)
    monkeypatch.setattr(rec, "RUNNER", "streamml.worker")
    paths = write_events(
        tmp_path / "errors.csv",
        GeneratorConfig(events=6_000_000, accounts=2_000, seed=5),
        fmt="csv",
        files=2,
        junk_rate=0.0001,
        by_key=True,
    )
    source = rec.SourceConfig(kind="file", paths=tuple(str(p) for p in paths), chunk_bytes=1 << 20)
    layout = StateLayout(shards=4, shard_hash="murmur2")
    clean = replace(rec.config_for(tmp_path, "clean", source, recovery=False), layout=layout)
    rec.run_clean(clean)
    crashed = rec.config_for(tmp_path, "crashed", source, recovery=True)
    crashed = replace(crashed, layout=layout, routing="partition")
    kills = rec.run_with_kills(
        crashed,
        seed=43,
        windows=rec.TWO_PROCESS_FILE_WINDOWS,
        kills_wanted=rec.TWO_PROCESS_KILLS,
        processes=2,
    )
    assert kills >= rec.TWO_PROCESS_KILLS
    rec.assert_same(clean, crashed)
    last = orjson.loads(crashed.stats_path.read_bytes())["counters"]
    assert last.get("crossed_batches", 0) == 0
    assert last.get("read", 0) < orjson.loads(clean.stats_path.read_bytes())["counters"]["read"]
    routing = orjson.loads((crashed.recovery_dir / "streamml-routing.json").read_bytes())
    assert routing == {"routing": "partition", "workers": 2}


def test_a_recovery_dir_keeps_its_routing(tmp_path):
    from streamml.operators.recovery_state import bind_routing

    bind_routing(tmp_path, "partition", 2)
    bind_routing(tmp_path, "partition", 2)
    with pytest.raises(RefusedError, match="partition routing over 2 worker"):
        bind_routing(tmp_path, "partition", 4)
    with pytest.raises(RefusedError, match="asks for exchange routing"):
        bind_routing(tmp_path, "exchange", 2)
    other = tmp_path / "other"
    other.mkdir()
    bind_routing(other, "exchange", 4)
    bind_routing(other, "exchange", 1)
    with pytest.raises(RefusedError, match="written with exchange routing"):
        bind_routing(other, "partition", 1)
