"""A backfill over files gives the online values and history rows a Kafka stream gives."""

import numpy as np
import orjson
import pytest
from bytewax.testing import run_main
from streamml.dataflows.environment import KAFKA_PREFIX
from streamml.dataflows.features import FeaturesConfig, SourceInput, build_flow
from streamml.operators.sources import GeneratorConfig, generate_events, generate_speed_tests
from streamml.state.history import read_history

from tests.dataflows.test_features_postgres import rocksdb_records

START = 1_767_225_600_000


def events(shuffle: bool) -> dict[str, list[bytes]]:
    """Speed tests and signal errors as JSON lines; shuffled within 20-minute blocks."""
    gen = GeneratorConfig(
        events=30_000, accounts=400, seed=11, start_ms=START, span_ms=2 * 86_400_000
    )
    keys, ts, fields = generate_speed_tests(gen)
    tests = [
        orjson.dumps(
            {"account": k.decode(), "ts": int(t), **{f: float(v[i]) for f, v in fields.items()}}
        )
        for i, (k, t) in enumerate(zip(keys.to_pylist(), ts.tolist(), strict=True))
    ]
    errs = generate_events(gen, 0, 0, 30_000)
    errors = [
        b'{"account": "%s", "ts": %d}' % (a, t)
        for a, t in zip(errs.accounts.to_pylist(), errs.ts.tolist(), strict=True)
    ]
    out = {"speed_tests": tests, "signal_errors": errors}
    if shuffle:
        rng = np.random.default_rng(1)
        for name, lines in out.items():
            times = np.array([orjson.loads(x)["ts"] for x in lines])
            block = times // 1_200_000
            order = np.lexsort((rng.random(len(lines)), block))
            out[name] = [lines[i] for i in order]
    return out


def produce(bootstrap: str, topic: str, lines: list[bytes]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    for line in lines:
        producer.send(topic, key=orjson.loads(line)["account"].encode(), value=line)
    producer.flush()
    producer.close()


def history(config: FeaturesConfig, name: str):
    t = read_history(config.history_dir, name)
    return sorted(
        zip(
            t.column("account").to_pylist(),
            t.column("event_time").to_pylist(),
            t.column("value").to_pylist(),
            t.column("feature_version").to_pylist(),
            strict=True,
        )
    )


@pytest.mark.parametrize("shuffle", [False, True], ids=["ordered", "shuffled"])
def test_backfill_equals_stream(tmp_path, kafka_broker, make_topic, shuffle):
    data = events(shuffle)
    topics = {}
    for name, lines in data.items():
        topics[name] = make_topic(partitions=2, prefix=f"{name}-{shuffle}")
        produce(kafka_broker, topics[name], lines)
        (tmp_path / f"{name}.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    kafka_env = (
        (KAFKA_PREFIX + "BROKERS", kafka_broker),
        (KAFKA_PREFIX + "START", "earliest"),
        (KAFKA_PREFIX + "STOP_AT_END", "1"),
    )
    common = {"shards": 4, "settle_ms": 0}
    stream = FeaturesConfig(
        inputs=tuple(SourceInput(n, "kafka", topic=t) for n, t in topics.items()),
        state_dir=tmp_path / "stream",
        history_dir=tmp_path / "stream-history",
        kafka_env=kafka_env,
        **common,
    )
    backfill = FeaturesConfig(
        inputs=tuple(
            SourceInput(n, "file", (str(tmp_path / f"{n}.jsonl"),), chunk_bytes=1 << 16)
            for n in data
        ),
        state_dir=tmp_path / "backfill",
        history_dir=tmp_path / "backfill-history",
        **common,
    )
    run_main(build_flow(stream))
    run_main(build_flow(backfill))
    for source in data:
        got, expected = rocksdb_records(backfill, source), rocksdb_records(stream, source)
        assert len(got) >= 100 and got == expected
    for name in (
        "speed_tests_24h",
        "download_ratio_mean_7d",
        "latency_ms_max_24h",
        "packet_loss_pct_last",
        "upload_ratio_min_7d",
        "signal_errors_24h",
    ):
        rows = history(backfill, name)
        assert rows and rows == history(stream, name), name
