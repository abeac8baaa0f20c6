"""The Kafka source and sinks against the real tansu broker (session fixture in conftest)."""

from __future__ import annotations

import random
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import bytewax.operators as op
import orjson
import pytest
from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.testing import TestingSink, TestingSource, run_main
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from streamml.operators.kafka import (
    KafkaAlertSink,
    KafkaDeadLetterSink,
    KafkaSinkConfig,
    KafkaSource,
    KafkaSourceConfig,
    _KafkaSourcePartition,
    ensure_topic,
    kafka_partition_name,
    parse_kafka_partition_name,
)
from streamml.operators.records import Alert, DeadLetter, RecordList

SEED = 20240611


def _values(n: int, seed: int = SEED) -> list[bytes | None]:
    rng = random.Random(seed)
    out: list[bytes | None] = []
    for i in range(n):
        r = rng.random()
        if r < 0.03:
            out.append(None)
        elif r < 0.06:
            out.append(b"\xff\xfe{bad utf-8 " + str(i).encode())
        else:
            ev = {"account": f"a{rng.randrange(50)}", "ts": 1_700_000_000_000 + i, "code": "E1"}
            out.append(orjson.dumps(ev))
    return out


def _produce(
    bootstrap: str, topic: str, values: list[bytes | None], partitions: int, linger_ms: int = 20
) -> dict[int, list[tuple[int, bytes | None]]]:
    """Produce round-robin over partitions; return {partition: [(offset, value)]} as acked."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=linger_ms, batch_size=64_000)
    futures = [
        (producer.send(topic, key=b"k%d" % i, value=v, partition=i % partitions), v)
        for i, v in enumerate(values)
    ]
    producer.flush()
    producer.close()
    acked: dict[int, list[tuple[int, bytes | None]]] = defaultdict(list)
    for fut, v in futures:
        md = fut.get(timeout=10)
        acked[md.partition].append((md.offset, v))
    return dict(acked)


def _read_flow(cfg: KafkaSourceConfig, out: list, recovery_dir: Path | None = None) -> None:
    flow = Dataflow("kafka_read")
    batches = op.input("in", flow, KafkaSource(cfg))
    op.output("out", batches, TestingSink(out))
    run_main(
        flow,
        epoch_interval=timedelta(milliseconds=100),
        recovery_config=RecoveryConfig(str(recovery_dir)) if recovery_dir else None,
    )


def _by_partition(batches: list[RecordList]) -> dict[int, list[tuple[int, bytes | None]]]:
    got: dict[int, list[tuple[int, bytes | None]]] = defaultdict(list)
    for rl in batches:
        assert isinstance(rl, RecordList)
        assert len(rl.values) == len(rl.positions) > 0
        assert rl.partition == kafka_partition_name(rl.topic, rl.topic_partition)
        got[rl.topic_partition].extend(zip(rl.positions, rl.values, strict=True))
    return dict(got)


@pytest.fixture(scope="module")
def filled_topic(kafka_broker: str) -> tuple[str, dict[int, list[tuple[int, bytes | None]]]]:
    topic = "kafka-source-filled"
    ensure_topic([kafka_broker], topic, 3)
    return topic, _produce(kafka_broker, topic, _values(3000), 3)


def test_source_reads_every_record_once_in_a_flow(kafka_broker, filled_topic, kafka_client):
    topic, acked = filled_topic
    assert sum(len(v) for v in acked.values()) == 3000
    cfg = KafkaSourceConfig(
        brokers=[kafka_broker], topic=topic, stop_at_end=True, batch_size=128, client=kafka_client
    )
    out: list[RecordList] = []
    _read_flow(cfg, out)
    assert max(len(rl.values) for rl in out) <= 128
    got = _by_partition(out)
    assert got == acked
    for recs in got.values():
        positions = [p for p, _ in recs]
        assert positions == list(range(len(positions)))
    values = [v for recs in got.values() for _, v in recs]
    assert values.count(None) > 0
    assert any(v is not None and v.startswith(b"\xff\xfe") for v in values)


def test_stop_at_end_sees_whole_last_batch(kafka_broker, make_topic, kafka_client):
    # tansu answers ListOffsets(latest) with the last batch's base offset + 1, so a 100-record
    # batch reports an end of 1; the source must still read all 100.
    topic = make_topic(1)
    _produce(kafka_broker, topic, [b"x%d" % i for i in range(100)], 1, linger_ms=200)
    probe = KafkaConsumer(bootstrap_servers=kafka_broker, group_id=None)
    tp = TopicPartition(topic, 0)
    listed = probe.end_offsets([tp])[tp]
    probe.close()
    cfg = KafkaSourceConfig(
        brokers=[kafka_broker], topic=topic, stop_at_end=True, client=kafka_client
    )
    part = _KafkaSourcePartition(cfg, 0, None)
    got = _drain(part)
    assert [p for p, _ in got] == list(range(100))
    assert part.snapshot() == 100
    assert listed < 100  # the broker quirk this test guards against is present


def _drain(part: _KafkaSourcePartition) -> list[tuple[int, bytes | None]]:
    got: list[tuple[int, bytes | None]] = []
    try:
        for _ in range(10_000):
            for rl in part.next_batch():
                got.extend(zip(rl.positions, rl.values, strict=True))
    except StopIteration:
        pass
    else:
        raise AssertionError("partition did not finish")
    finally:
        part.close()
    return got


def test_resume_state_is_the_next_offset(kafka_broker, filled_topic, kafka_client):
    topic, acked = filled_topic
    base = {"brokers": [kafka_broker], "topic": topic, "stop_at_end": True, "client": kafka_client}
    part = _KafkaSourcePartition(KafkaSourceConfig(**base), 1, 700)
    assert part.snapshot() == 700
    got = _drain(part)
    assert got == acked[1][700:]
    assert part.snapshot() == len(acked[1])

    # "earliest" ignores a stored position; "latest" starts at the end.
    assert (
        _drain(_KafkaSourcePartition(KafkaSourceConfig(**base, start="earliest"), 1, 700))
        == (acked[1])
    )
    latest = _KafkaSourcePartition(KafkaSourceConfig(**base, start="latest"), 1, None)
    assert latest.snapshot() == len(acked[1])
    assert _drain(latest) == []


def test_live_partition_waits_then_reads_new_records(kafka_broker, make_topic, kafka_client):
    topic = make_topic(1)
    cfg = KafkaSourceConfig(brokers=[kafka_broker], topic=topic, client=kafka_client)
    part = _KafkaSourcePartition(cfg, 0, None)
    try:
        assert part.next_batch() == []
        assert part.next_awake() is not None  # idle: no busy loop
        _produce(kafka_broker, topic, [b"a", b"b", b"c"], 1)
        got: list[tuple[int, bytes | None]] = []
        deadline = time.monotonic() + 10
        while len(got) < 3 and time.monotonic() < deadline:
            for rl in part.next_batch():
                got.extend(zip(rl.positions, rl.values, strict=True))
            time.sleep(0.005)
        assert got == [(0, b"a"), (1, b"b"), (2, b"c")]
        assert part.snapshot() == 3
    finally:
        part.close()


def test_source_resumes_from_bytewax_recovery(kafka_broker, make_topic, tmp_path, kafka_client):
    topic = make_topic(3)
    values = _values(1500, seed=7)
    first = _produce(kafka_broker, topic, values[:900], 3)
    init_db_dir(tmp_path, 1)
    cfg = KafkaSourceConfig(
        brokers=[kafka_broker], topic=topic, stop_at_end=True, client=kafka_client
    )
    out1: list[RecordList] = []
    _read_flow(cfg, out1, tmp_path)
    assert _by_partition(out1) == first

    second = _produce(kafka_broker, topic, values[900:], 3)
    out2: list[RecordList] = []
    _read_flow(cfg, out2, tmp_path)
    assert _by_partition(out2) == second


def test_source_rejects_bad_config_and_missing_topic(kafka_broker):
    with pytest.raises(ValueError, match="start"):
        KafkaSourceConfig(brokers=[kafka_broker], topic="t", start="beginning")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="security"):
        KafkaSourceConfig(brokers=[kafka_broker], topic="t", security={"sasl_user": "x"})
    with pytest.raises(ValueError, match="brokers"):
        KafkaSourceConfig(brokers=[], topic="t")
    with pytest.raises(ValueError, match="client"):
        KafkaSourceConfig(brokers=[kafka_broker], topic="t", client="librdkafka")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="client"):
        KafkaSinkConfig(brokers=[kafka_broker], topic="t", client="kafka")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not found"):
        KafkaSource(KafkaSourceConfig(brokers=[kafka_broker], topic="no-such-topic")).list_parts()


def test_config_from_env():
    env = {
        "STREAMML_KAFKA_BROKERS": "h1:9092, h2:9092",
        "STREAMML_KAFKA_TOPIC": "errors",
        "STREAMML_KAFKA_STOP_AT_END": "1",
        "STREAMML_KAFKA_BATCH_SIZE": "42",
        "STREAMML_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "STREAMML_KAFKA_SASL_MECHANISM": "PLAIN",
        "STREAMML_KAFKA_ALERTS_TOPIC": "alerts",
    }
    src = KafkaSourceConfig.from_env(env=env)
    assert src.brokers == ("h1:9092", "h2:9092")
    assert (src.topic, src.stop_at_end, src.batch_size, src.start) == ("errors", True, 42, "stored")
    assert src.security == {"security_protocol": "SASL_SSL", "sasl_mechanism": "PLAIN"}
    assert src.consumer_kwargs()["security_protocol"] == "SASL_SSL"
    sink = KafkaSinkConfig.from_env(env=env)
    assert sink.topic == "alerts"
    assert sink.producer_kwargs()["enable_idempotence"] is True
    with pytest.raises(ValueError, match="STREAMML_KAFKA_DEAD_LETTERS_TOPIC"):
        KafkaSinkConfig.from_env(env=env, topic_var="DEAD_LETTERS_TOPIC")
    assert (src.client, sink.client) == ("kafka-python", "kafka-python")
    assert src.fast_records is True
    assert src.consumer_kwargs()["metrics_enabled"] is False
    slow = KafkaSourceConfig.from_env(env={**env, "STREAMML_KAFKA_FAST_RECORDS": "0"})
    assert slow.fast_records is False
    confluent = {
        **env,
        "STREAMML_KAFKA_CLIENT": "confluent",
        "STREAMML_KAFKA_QUEUED_MAX_KBYTES": "8",
    }
    assert KafkaSourceConfig.from_env(env=confluent).client == "confluent"
    assert KafkaSourceConfig.from_env(env=confluent).queued_max_kbytes == 8
    assert KafkaSinkConfig.from_env(env=confluent).client == "confluent"
    with pytest.raises(ValueError, match="STREAMML_KAFKA_CLIENT"):
        KafkaSourceConfig.from_env(env={**env, "STREAMML_KAFKA_CLIENT": "java"})


def _consume_all(bootstrap: str, topic: str, expected: int) -> list:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, fetch_max_wait_ms=50)
    parts = consumer.partitions_for_topic(topic)
    consumer.assign([TopicPartition(topic, p) for p in parts])
    consumer.seek_to_beginning()
    got: list = []
    for _ in range(100):
        for recs in consumer.poll(timeout_ms=100).values():
            got.extend(recs)
        if len(got) >= expected:
            break
    consumer.close()
    return got


def test_alert_sink_writes_keyed_deduplicable_alerts(kafka_broker, make_topic, kafka_client):
    topic = make_topic(3)
    alerts = [
        Alert("acc-1", 1_700_000_000_000, 2001, "kafka:errors:0", 10),
        Alert("acc-2", 1_700_000_000_500, 2001, "kafka:errors:1", 11),
        Alert("acc-1", 1_700_090_000_000, 2001, "kafka:errors:0", 99),
    ]
    replayed = alerts + alerts[:2]  # what a restart re-emits
    flow = Dataflow("alerts")
    op.output(
        "out",
        op.input("in", flow, TestingSource(replayed)),
        KafkaAlertSink(KafkaSinkConfig(brokers=[kafka_broker], topic=topic, client=kafka_client)),
    )
    run_main(flow)

    got = _consume_all(kafka_broker, topic, len(replayed))
    assert len(got) == len(replayed)
    by_id = {}
    for rec in got:
        body = orjson.loads(rec.value)
        assert dict(rec.headers)["alert_id"] == body["id"].encode()
        assert rec.key == body["account"].encode()
        by_id[body["id"]] = (rec.partition, body)
    assert sorted(by_id) == sorted(a.alert_id for a in alerts)
    assert {b["id"]: b for _, b in by_id.values()} == {a.alert_id: a.to_json() for a in alerts}
    # one account, one partition
    assert len({p for p, b in by_id.values() if b["account"] == "acc-1"}) == 1


def test_dead_letter_sink_writes_raw_value_and_source_headers(
    kafka_broker, make_topic, kafka_client
):
    topic = make_topic(1)
    full = b'{"account": "' + b"x" * 2000 + b'"}'
    letters = [
        DeadLetter("invalid_json", b"\xff\xfe", "kafka:signal-errors:2", 41, "bad utf-8"),
        (DeadLetter("account_too_long", full[:1024], "kafka:signal-errors:0", 7), full),
        (DeadLetter("null_value", b"", "kafka:signal-errors:1", 3), None),
        DeadLetter("missing_ts", b'{"account":"a"}', "file:/data/errors.jsonl", 120),
    ]
    flow = Dataflow("dead_letters")
    op.output(
        "out",
        op.input("in", flow, TestingSource(letters)),
        KafkaDeadLetterSink(
            KafkaSinkConfig(brokers=[kafka_broker], topic=topic, client=kafka_client)
        ),
    )
    run_main(flow)

    got = sorted(_consume_all(kafka_broker, topic, len(letters)), key=lambda r: r.offset)
    assert [r.value for r in got] == [b"\xff\xfe", full, None, b'{"account":"a"}']
    headers = [dict(r.headers) for r in got]
    assert headers[0] == {
        "reason": b"invalid_json",
        "detail": b"bad utf-8",
        "source": b"kafka:signal-errors:2",
        "source_topic": b"signal-errors",
        "source_partition": b"2",
        "source_offset": b"41",
    }
    assert headers[1]["reason"] == b"account_too_long" and headers[1]["source_offset"] == b"7"
    assert headers[3]["source_topic"] == b"" and headers[3]["source_partition"] == b"-1"
    assert headers[3]["source"] == b"file:/data/errors.jsonl"


def test_ensure_topic_is_idempotent_and_names_parse(kafka_broker):
    assert ensure_topic(kafka_broker, "ensure-me", 4) == 4
    assert ensure_topic([kafka_broker], "ensure-me", 4) == 4
    assert parse_kafka_partition_name("kafka:a.b-c:12") == ("a.b-c", 12)
    assert parse_kafka_partition_name("file:/x") is None


def _committed(bootstrap: str, group: str, tp: TopicPartition) -> int | None:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return consumer.committed(tp)
    finally:
        consumer.close(autocommit=False)


def test_group_id_commits_the_snapshot_before_the_last_and_the_end(
    kafka_broker, filled_topic, kafka_client
):
    topic, acked = filled_topic
    group = f"monitor-snapshots-{kafka_client}"
    tp = TopicPartition(topic, 2)
    cfg = KafkaSourceConfig(
        brokers=[kafka_broker],
        topic=topic,
        stop_at_end=True,
        batch_size=100,
        group_id=group,
        client=kafka_client,
    )
    part = _KafkaSourcePartition(cfg, 2, None)

    def read_past(offset: int) -> None:
        nxt = 0
        while nxt <= offset:
            for rl in part.next_batch():
                nxt = rl.positions[-1] + 1

    try:
        read_past(300)
        first = part.snapshot()  # nothing committed yet: a snapshot commits the one before it
        assert _committed(kafka_broker, group, tp) is None
        read_past(first + 200)
        second = part.snapshot()
        deadline = time.monotonic() + 10
        while _committed(kafka_broker, group, tp) != first and time.monotonic() < deadline:
            part.next_batch()  # polling completes the asynchronous commit
            time.sleep(0.05)
        assert _committed(kafka_broker, group, tp) == first < second
    except BaseException:
        part.close()
        raise
    _drain(part)  # to the end, then close: the end position is committed
    assert _committed(kafka_broker, group, tp) == len(acked[2])


def test_group_id_is_not_where_reading_resumes(kafka_broker, filled_topic, kafka_client):
    topic, acked = filled_topic
    base = {"brokers": [kafka_broker], "topic": topic, "stop_at_end": True, "client": kafka_client}
    group = f"monitor-not-resume-{kafka_client}"
    _drain(_KafkaSourcePartition(KafkaSourceConfig(**base, group_id=group), 0, None))
    assert _committed(kafka_broker, group, TopicPartition(topic, 0)) == len(acked[0])
    # a new reader with the same group and no snapshot still starts from the beginning
    again = _drain(_KafkaSourcePartition(KafkaSourceConfig(**base, group_id=group), 0, None))
    assert again == acked[0]
    with pytest.raises(ValueError, match="group_id"):
        KafkaSourceConfig(**base, group_id=" ")
    env = {"STREAMML_KAFKA_BROKERS": "b:1", "STREAMML_KAFKA_TOPIC": "t"}
    assert KafkaSourceConfig.from_env(env={**env, "STREAMML_KAFKA_GROUP_ID": "g"}).group_id == "g"
    assert KafkaSourceConfig.from_env(env=env).group_id is None


def test_a_refused_record_fails_the_sink_alike(kafka_broker, make_topic, kafka_client):
    topic = make_topic(1)
    cfg = KafkaSinkConfig(
        brokers=[kafka_broker], topic=topic, max_request_size=2000, client=kafka_client
    )
    letter = DeadLetter("invalid_json", b"x", "kafka:errors:0", 5)
    part = KafkaDeadLetterSink(cfg).build("dead", 0, 1)
    try:
        with pytest.raises(RuntimeError, match="1 of 2 records were not acknowledged"):
            part.write_batch([letter, (letter, b"y" * 10_000)])  # the second is too large
    finally:
        part.close()


def test_security_settings_translate_to_librdkafka_names():
    pytest.importorskip("confluent_kafka")
    from streamml.operators.kafka_confluent import librdkafka_security

    got = librdkafka_security(
        {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "PLAIN",
            "sasl_plain_username": "u",
            "sasl_plain_password": "p",
            "ssl_cafile": "/ca.pem",
            "ssl_check_hostname": "false",
        }
    )
    assert got == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "u",
        "sasl.password": "p",
        "ssl.ca.location": "/ca.pem",
        "ssl.endpoint.identification.algorithm": "none",
    }
    with pytest.raises(ValueError, match="sasl_kerberos_domain_name"):
        librdkafka_security({"sasl_kerberos_domain_name": "example"})


def test_readers_give_the_offsets_of_a_topic_with_gaps(kafka_broker, make_topic, kafka_client):
    """Transaction markers take offsets: the readers' offsets are the records' own, gaps and all."""
    from streamml.operators.kafka_clients import open_reader

    topic = make_topic(1)
    try:
        producer = KafkaProducer(bootstrap_servers=kafka_broker, transactional_id=f"tx-{topic}")
        producer.init_transactions()
        for i in range(3):
            producer.begin_transaction()
            for j in range(2500):  # more than the confluent reader's chunk of 2,000
                producer.send(topic, value=b"tx-%d-%d" % (i, j))
            producer.commit_transaction()
        producer.close()
    except Exception as exc:  # the broker may not do transactions
        pytest.skip(f"transactions not available on this broker: {exc!r}")
    _produce(kafka_broker, topic, [b"plain-%d" % i for i in range(2500)], 1)
    consumer = KafkaConsumer(bootstrap_servers=kafka_broker, enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek(tp, 0)
    expected: list[tuple[int, bytes]] = []
    while len(expected) < 10_000:
        expected += [(r.offset, r.value) for r in consumer.poll(200).get(tp, [])]
    consumer.close()
    offsets = [o for o, _ in expected]
    assert offsets != list(range(offsets[0], offsets[0] + len(offsets)))  # the markers' gaps
    reader = open_reader(
        KafkaSourceConfig(brokers=[kafka_broker], topic=topic, client=kafka_client), 0
    )
    try:
        # from 500, a chunk of 2,000 ends at the first marker: the next one starts after a gap
        starts = ((0, 100_000), (0, 7), (41, 3000), (500, 4000), (offsets[-2500], 100_000))
        for start, size in starts:
            reader.seek(start)
            got: list[tuple[int, bytes | None]] = []
            want = [(o, v) for o, v in expected if o >= start]
            kinds = set()
            for _ in range(2000):
                values, positions = reader.poll(size, 100)
                assert len(values) == len(positions) <= size
                got += zip(positions, values, strict=True)
                kinds.add(type(positions))
                if len(got) >= len(want):
                    break
            assert got == want
            if kafka_client == "confluent" and start == offsets[-2500]:
                assert kinds <= {range}  # no gap there: no Python integer per record
    finally:
        reader.close()
