"""The error-count flow reading and writing a real Kafka-protocol broker (tansu)."""

import random
from collections import defaultdict

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from tests.oracle import RollingOracle
from tests.streamml.test_cli import streamml

MALFORMED = [b"not json", b'{"account": ""}', b'{"account": "a", "ts": -1}', b"\xff\xfe", b"[]"]


def read_topic(bootstrap: str, topic: str) -> list:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None)
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    records, idle = [], 0
    while idle < 5:
        batch = consumer.poll(timeout_ms=500)
        idle = 0 if batch else idle + 1
        for recs in batch.values():
            records.extend(recs)
    consumer.close()
    return records


def test_kafka_in_alerts_and_dead_letters_out(kafka_broker, make_topic, tmp_path, kafka_client):
    topic = make_topic(3)
    alerts_topic = make_topic(3)
    dead_topic = make_topic(1)
    rng = random.Random(11)
    accounts = [f"acct-{i}" for i in range(12)]
    producer = KafkaProducer(bootstrap_servers=kafka_broker, acks="all", linger_ms=5)
    sent = []
    malformed = 0
    for i in range(3000):
        if i % 97 == 0:
            producer.send(topic, value=MALFORMED[malformed % len(MALFORMED)], partition=i % 3)
            malformed += 1
            continue
        account = rng.choice(accounts[:4] if rng.random() < 0.6 else accounts)
        ts = 3_600_000 * (i // 60) + rng.randint(-7_200_000, 3_600_000)
        ts = max(ts, 0) if rng.random() > 0.01 else max(ts - 30 * 3_600_000, 0)
        producer.send(
            topic, key=account.encode(), value=orjson.dumps({"account": account, "ts": ts})
        )
        sent.append((account, ts))
    producer.flush()
    producer.close()

    state = tmp_path / "state"
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
        "150",
        "--alerts-topic",
        alerts_topic,
        "--dead-letters-topic",
        dead_topic,
        "--kafka-client",
        kafka_client,
        "--json",
    )
    counters = orjson.loads(out.stdout)["counters"]
    assert counters["read"] == len(sent) + malformed
    assert counters["dead"] == malformed

    oracle = RollingOracle(threshold=150)
    expected = []
    for account, ts in sent:  # one producer, keyed: each account's order is its send order
        _kind, value, fired = oracle.apply(account, ts)
        if fired:
            expected.append((account, ts, value))
    alerts = [orjson.loads(r.value) for r in read_topic(kafka_broker, alerts_topic)]
    assert sorted((a["account"], a["ts"], a["value"]) for a in alerts) == sorted(expected)
    assert expected
    ids = [a["id"] for a in alerts]
    assert len(set(ids)) == len(ids)

    dead = read_topic(kafka_broker, dead_topic)
    assert len(dead) == malformed
    for record in dead:
        headers = {k: v for k, v in record.headers}
        assert headers["reason"] and headers["source_topic"] == topic.encode()
        assert int(headers["source_partition"]) in (0, 1, 2)
        assert int(headers["source_offset"]) >= 0
        assert record.value in MALFORMED

    last = defaultdict(int)
    for account, _ in sent:
        last[account] = oracle.max_bucket[account]
    got = streamml(
        "features",
        "get",
        *accounts,
        "--state-dir",
        str(state),
        "--as-of",
        str(max(last.values()) * 3_600_000),
        "--json",
    )
    for line in got.stdout.splitlines():
        row = orjson.loads(line)
        as_of = max(last.values()) * 3_600_000
        expected_value = oracle.value_as_of(row["account"], as_of)
        assert row["features"]["signal_errors_24h"]["value"] == expected_value


def test_group_id_shows_the_flows_lag_to_kafka_tools(kafka_broker, make_topic, tmp_path):
    # on kafka-python only: the group commits of both clients are checked in
    # tests/operators/test_kafka.py
    from kafka import KafkaAdminClient

    topic = make_topic(2)
    producer = KafkaProducer(bootstrap_servers=kafka_broker, acks="all")
    for i in range(400):
        producer.send(topic, value=orjson.dumps({"account": f"a{i % 7}", "ts": i}), partition=i % 2)
    producer.flush()
    producer.close()
    group = "streamml-lag-monitor"
    args = ["run", "error-count", "--source", "kafka", "--brokers", kafka_broker]
    args += ["--topic", topic, "--stop-at-end", "--group-id", group, "--json"]
    args += ["--recovery-dir", str(tmp_path / "recovery"), "--snapshot-interval", "1"]
    out = streamml(*args, "--state-dir", str(tmp_path / "state"))
    assert orjson.loads(out.stdout)["counters"]["read"] == 400

    admin = KafkaAdminClient(bootstrap_servers=kafka_broker)
    try:
        offsets = admin.list_group_offsets({group: None})[group]
    finally:
        admin.close()
    assert {tp.partition: o.offset for tp, o in offsets.items() if tp.topic == topic} == {
        0: 200,
        1: 200,
    }
