"""Nothing lost, nothing doubled: the routine operations people do, each against the oracle.

Every test does one operation as a user would (through the `streamml` command) and asserts
either the exact result of the brute-force oracle or a clear refusal with nothing written.
"""

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from streamml.operators.recovery_state import first_start
from streamml.state.layout import IncompleteStateError, StateLayout
from streamml.state.online import OnlineStore
from streamml.state.rolling_store import stored_positions

from tests.conftest import create_topic
from tests.oracle import RollingOracle

HOUR = 3_600_000
T0 = 1_767_225_600_000


def streamml(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "streamml.cli", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=300,
    )


def ok(*args: str) -> dict:
    proc = streamml(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    return orjson.loads(proc.stdout.splitlines()[-1])["counters"]


def refused(*args: str) -> str:
    proc = streamml(*args)
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    return proc.stderr


def lines(events) -> bytes:
    return b"".join(orjson.dumps({"account": a, "ts": t}) + b"\n" for a, t in events)


def run_args(tmp: Path, *inputs: Path, extra=()) -> list[str]:
    args = ["run", "error-count", "--state-dir", str(tmp / "state"), "--threshold", "5"]
    for p in inputs:
        args += ["--input", str(p)]
    args += ["--alerts-out", str(tmp / "alerts.jsonl"), "--late-out", str(tmp / "late.jsonl")]
    args += ["--dead-letters-out", str(tmp / "dead.jsonl"), "--settle-ms", "600000"]
    return [*args, *extra]


def expected(events, as_of):
    oracle = RollingOracle(window=24, bucket_ms=HOUR, threshold=5)
    alerts = []
    for a, t in events:
        _kind, _value, fired = oracle.apply(a, t)
        if fired:
            alerts.append((a, t))
    values = {a: oracle.value_as_of(a, as_of) for a in {a for a, _ in events}}
    return values, alerts


def online(tmp: Path, accounts, as_of):
    store = OnlineStore(tmp / "state")
    try:
        return {a: store.get(a, as_of=as_of).value for a in accounts}
    finally:
        store.close()


def read_jsonl(path: Path) -> list[dict]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines()] if path.exists() else []


def snapshot_files(tmp: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes() for p in tmp.glob("*.jsonl") if p.name not in ("in.jsonl", "b.jsonl")
    }


# 1. A file replaced or rotated at the same path is a new input; a truncated one is refused.
def test_replaced_file_is_read_as_new_input(tmp_path):
    path = tmp_path / "in.jsonl"
    first = [("acct-1", T0 + i * 1000) for i in range(8)]
    second = [("acct-1", T0 + HOUR + i * 1000) for i in range(10)]
    path.write_bytes(lines(first))
    ok(*run_args(tmp_path, path))
    path.rename(tmp_path / "in.jsonl.1")  # rotated away, a new file in its place
    path.write_bytes(lines(second))
    c = ok(*run_args(tmp_path, path))
    assert c["accepted"] == 10 and c.get("skipped", 0) == 0
    values, alerts = expected(first + second, T0 + 2 * HOUR)
    assert online(tmp_path, ["acct-1"], T0 + 2 * HOUR) == values
    got = [(a["account"], a["ts"]) for a in read_jsonl(tmp_path / "alerts.jsonl")]
    assert got == alerts
    assert len({a["id"] for a in read_jsonl(tmp_path / "alerts.jsonl")}) == len(alerts)


def test_truncated_file_is_refused_with_nothing_written(tmp_path):
    path = tmp_path / "in.jsonl"
    events = [("acct-1", T0 + i * 1000) for i in range(10)]
    path.write_bytes(lines(events))
    ok(*run_args(tmp_path, path))
    before = stored_positions(tmp_path / "state", 16)
    outputs = snapshot_files(tmp_path)
    path.write_bytes(lines(events[:6]))  # same start, cut short in place
    err = refused(*run_args(tmp_path, path))
    assert "shorter" in err and "--reset-source" in err
    assert stored_positions(tmp_path / "state", 16) == before
    assert snapshot_files(tmp_path) == outputs
    c = ok(*run_args(tmp_path, path, extra=["--reset-source", str(path)]))
    assert c["accepted"] == 6
    assert online(tmp_path, ["acct-1"], T0 + HOUR) == {"acct-1": 16}


def test_recreated_topic_is_refused(kafka_broker, tmp_path):
    from kafka import KafkaAdminClient, KafkaProducer

    topic = create_topic(kafka_broker, f"recreated-{os.getpid()}", 1)
    producer = KafkaProducer(bootstrap_servers=kafka_broker)
    for i in range(6):
        producer.send(topic, orjson.dumps({"account": "acct-1", "ts": T0 + i}))
    producer.flush()
    args = ["run", "error-count", "--source", "kafka", "--brokers", kafka_broker]
    args += ["--topic", topic, "--stop-at-end", "--state-dir", str(tmp_path / "state")]
    assert ok(*args)["accepted"] == 6
    admin = KafkaAdminClient(bootstrap_servers=kafka_broker)
    admin.delete_topics([topic])
    admin.close()
    create_topic(kafka_broker, topic, 1)
    for i in range(2):
        producer.send(topic, orjson.dumps({"account": "acct-1", "ts": T0 + 100 + i}))
    producer.flush()
    producer.close()
    err = refused(*args)
    assert "created again" in err and "--reset-source" in err
    assert online(tmp_path, ["acct-1"], T0 + HOUR) == {"acct-1": 6}
    assert ok(*args, "--reset-source", f"kafka:{topic}")["accepted"] == 2
    assert online(tmp_path, ["acct-1"], T0 + HOUR) == {"acct-1": 8}


# 2. Only complete lines are records.
def test_partial_last_line_is_held_back_then_read_once(tmp_path):
    path = tmp_path / "in.csv"
    path.write_bytes(b"account,ts,code\nacct-1,%d,E\nacct-1,%d,E\nacct-1,17672" % (T0, T0 + 1))
    c = ok(*run_args(tmp_path, path))
    assert c["accepted"] == 2 and c.get("late", 0) == 0 and c["held_back"] == 1
    with path.open("ab") as f:
        f.write(b"25600005,E\n")
    c = ok(*run_args(tmp_path, path))
    assert c["accepted"] == 1 and c.get("late", 0) == 0 and c.get("held_back", 0) == 0
    assert online(tmp_path, ["acct-1"], T0 + HOUR) == {"acct-1": 3}


def test_file_without_final_newline_counts_its_last_line_once(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(lines([("acct-1", T0)]) + b'{"account": "acct-1", "ts": %d}' % (T0 + 5))
    settled = [*run_args(tmp_path, path)[:-2], "--settle-ms", "0"]
    assert ok(*settled)["accepted"] == 2
    assert ok(*settled).get("accepted", 0) == 0
    assert online(tmp_path, ["acct-1"], T0 + HOUR) == {"acct-1": 2}


# 3. The state dir and the recovery dir belong together.
def test_new_recovery_dir_on_state_of_another_is_refused(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(lines([("acct-1", T0 + i) for i in range(7)]))
    ok(*run_args(tmp_path, path, extra=["--recovery-dir", str(tmp_path / "rec1")]))
    outputs = snapshot_files(tmp_path)
    err = refused(*run_args(tmp_path, path, extra=["--recovery-dir", str(tmp_path / "rec2")]))
    assert str(tmp_path / "rec2") in err and "recovery reset" in err
    assert snapshot_files(tmp_path) == outputs
    rec2 = str(tmp_path / "rec2")
    reset = streamml("recovery", "reset", rec2, "--state-dir", str(tmp_path / "state"))
    assert reset.returncode == 0, reset.stderr
    c = ok(*run_args(tmp_path, path, extra=["--recovery-dir", rec2]))
    assert c.get("accepted", 0) == 0
    assert snapshot_files(tmp_path) == outputs


def test_old_recovery_dir_with_deleted_state_dir_is_refused(tmp_path):
    import shutil

    path = tmp_path / "in.jsonl"
    path.write_bytes(lines([("acct-1", T0 + i) for i in range(10)]))
    rec = ["--recovery-dir", str(tmp_path / "rec")]
    ok(*run_args(tmp_path, path, extra=rec))
    shutil.rmtree(tmp_path / "state")
    err = refused(*run_args(tmp_path, path, extra=rec))
    assert "holds no state" in err and str(tmp_path / "state") in err
    assert not (tmp_path / "state").exists()


# 4. An output file gone while its recovery dir is kept: refused, never NUL bytes.
def test_deleted_output_with_kept_recovery_dir_is_refused(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(lines([("acct-1", T0 + i) for i in range(10)]))
    rec = ["--recovery-dir", str(tmp_path / "rec"), "--snapshot-interval", "1"]
    ok(*run_args(tmp_path, path, extra=rec))
    assert read_jsonl(tmp_path / "alerts.jsonl")
    (tmp_path / "alerts.jsonl").unlink()
    with path.open("ab") as f:
        f.write(lines([("acct-2", T0 + i) for i in range(10)]))
    before = stored_positions(tmp_path / "state", 16)
    err = refused(*run_args(tmp_path, path, extra=rec))
    assert "alerts.jsonl is gone" in err
    assert not (tmp_path / "alerts.jsonl").exists()
    assert stored_positions(tmp_path / "state", 16) == before


# 5 and 6. Re-runs read nothing applied, emit nothing again, and say so.
def test_rerun_without_recovery_emits_nothing_again(tmp_path):
    path = tmp_path / "in.jsonl"
    events = [("acct-1", T0 + i * 1000) for i in range(8)] + [("acct-1", T0 - 30 * HOUR)]
    path.write_bytes(lines(events) + b"not json\n" + b'{"ts": 1}\n')
    first = ok(*run_args(tmp_path, path))
    assert (first["accepted"], first["late"], first["dead"]) == (8, 1, 2)
    outputs = snapshot_files(tmp_path)
    assert len(read_jsonl(tmp_path / "dead.jsonl")) == 2
    again = ok(*run_args(tmp_path, path))
    assert all(again.get(k, 0) == 0 for k in ("read", "accepted", "late", "dead", "skipped"))
    assert snapshot_files(tmp_path) == outputs


def test_kafka_stored_start_without_recovery_resends_nothing(kafka_broker, make_topic, tmp_path):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    topic, dlq = make_topic(1), make_topic(1)
    producer = KafkaProducer(bootstrap_servers=kafka_broker)
    for i in range(5):
        producer.send(topic, orjson.dumps({"account": "acct-1", "ts": T0 + i}))
    producer.send(topic, b"junk")
    producer.flush()
    args = ["run", "error-count", "--source", "kafka", "--brokers", kafka_broker, "--topic"]
    args += [topic, "--stop-at-end", "--dead-letters-topic", dlq]
    args += ["--state-dir", str(tmp_path / "state")]
    assert ok(*args)["accepted"] == 5
    again = ok(*args)
    assert again.get("read", 0) == 0 and again.get("dead", 0) == 0
    producer.send(topic, orjson.dumps({"account": "acct-1", "ts": T0 + 9}))
    producer.flush()
    producer.close()
    assert ok(*args)["accepted"] == 1
    consumer = KafkaConsumer(bootstrap_servers=kafka_broker, consumer_timeout_ms=2000)
    tp = TopicPartition(dlq, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    assert len(list(consumer)) == 1
    consumer.close()
    assert online(tmp_path, ["acct-1"], T0 + HOUR) == {"acct-1": 6}


# 7. Marks are written whole: a kill before the link leaves no mark, an old empty one is refused.
def test_recovery_marks_are_whole_or_absent(tmp_path):
    marks = tmp_path / "streamml-outputs"
    marks.mkdir()
    (marks / ".leftover.json.tmp").write_bytes(b"")  # a kill between the write and the link
    assert first_start(tmp_path, "out", 5) == 5
    assert first_start(tmp_path, "out", 9) == 5
    for mark in marks.glob("*.json"):
        mark.write_bytes(b"")  # a mark emptied by an older version's kill
    with pytest.raises(Exception, match=r"unreadable.*recovery reset"):
        first_start(tmp_path, "out", 9)


# 9. An incomplete state dir is refused, never read as zeros.
def test_incomplete_state_dir_is_refused(tmp_path):
    import shutil

    path = tmp_path / "in.jsonl"
    path.write_bytes(lines([("acct-1", T0 + i) for i in range(3)]))
    ok(*run_args(tmp_path, path))
    shutil.rmtree(StateLayout.shard_dir(tmp_path / "state", 5))
    with pytest.raises(IncompleteStateError, match="shard-005"):
        OnlineStore(tmp_path / "state")
    proc = streamml("features", "get", "acct-1", "--state-dir", str(tmp_path / "state"))
    assert proc.returncode == 2 and "shard-005" in proc.stderr
    err = refused(*run_args(tmp_path, path))
    assert "shard-005" in err
