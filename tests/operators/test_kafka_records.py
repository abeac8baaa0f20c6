"""The fast record parser of the kafka-python reader against kafka-python's own parser.

Batches built with kafka-python's `DefaultRecordBatchBuilder` (hypothesis), hand-made control and
aborted transactional batches, corrupted CRCs, and records fetched from the real tansu broker.
The oracle is kafka-python's `Fetcher.PartitionRecords`, the class the fast one replaces.
"""

from __future__ import annotations

import struct
from collections import namedtuple
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import Fetcher, IsolationLevel
from kafka.errors import CorruptRecordError
from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.record.memory_records import MemoryRecords
from kafka.record.util import calc_crc32c
from streamml.operators import kafka_records
from streamml.operators.kafka import KafkaSourceConfig
from streamml.operators.kafka_clients import KafkaPythonReader
from streamml.operators.kafka_records import (
    OffsetSink,
    _FastPartitionRecords,
    check_supported,
    install,
    parse_records,
)

TP = TopicPartition("t", 0)
Aborted = namedtuple("Aborted", "producer_id first_offset")  # a fetch response's aborted txn
CODECS = {"none": 0, "gzip": 1}
_ATTRIBUTES = 21
_CRC = 17
_CONTROL = 0x20


def _batch(
    base: int,
    records: list[tuple[int, bytes | None, bytes | None, list[tuple[str, bytes]]]],
    *,
    codec: int = 0,
    producer_id: int = -1,
    transactional: bool = False,
    control: bool = False,
) -> bytes:
    """One v2 batch at `base` of (offset delta, key, value, headers) records."""
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=codec,
        is_transactional=int(transactional),
        producer_id=producer_id,
        producer_epoch=0 if producer_id >= 0 else -1,
        base_sequence=0 if producer_id >= 0 else -1,
        batch_size=1 << 30,
    )
    for delta, key, value, headers in records:
        builder.append(delta, timestamp=1_700_000_000_000 + delta, key=key, value=value,
                       headers=headers)  # fmt: skip
    buf = bytearray(builder.build())
    buf[0:8] = struct.pack(">q", base)
    if control:
        attrs = struct.unpack_from(">h", buf, _ATTRIBUTES)[0] | _CONTROL
        struct.pack_into(">h", buf, _ATTRIBUTES, attrs)
        struct.pack_into(">I", buf, _CRC, calc_crc32c(bytes(buf[_ATTRIBUTES:])))
    return bytes(buf)


def _marker(base: int, producer_id: int, *, commit: bool) -> bytes:
    """A control batch holding one commit or abort marker of `producer_id`'s transaction."""
    key = struct.pack(">hh", 0, 1 if commit else 0)
    return _batch(
        base,
        [(0, key, struct.pack(">hi", 0, 0), [])],
        producer_id=producer_id,
        transactional=True,
        control=True,
    )


def _oracle(
    data: bytes,
    fetch_offset: int,
    *,
    isolation: Any = IsolationLevel.READ_UNCOMMITTED,
    aborted: list[Any] | None = None,
    take: int | None = None,
) -> tuple[list[bytes | None], list[int], int]:
    """kafka-python's own parsing: values, offsets and the next fetch offset."""
    part = Fetcher.PartitionRecords(
        fetch_offset,
        TP,
        MemoryRecords(data),
        check_crcs=True,
        isolation_level=isolation,
        aborted_transactions=aborted,
    )
    recs: list[Any] = []
    while part:
        recs += part.take(take)
    return [r.value for r in recs], [r.offset for r in recs], part.next_fetch_offset


def _fast(
    data: bytes,
    fetch_offset: int,
    *,
    isolation: Any = IsolationLevel.READ_UNCOMMITTED,
    aborted: list[Any] | None = None,
    take: int | None = None,
) -> tuple[list[bytes | None], list[int], int]:
    sink = OffsetSink()
    part = _FastPartitionRecords(
        fetch_offset,
        TP,
        MemoryRecords(data),
        sink=sink,
        check_crcs=True,
        isolation_level=isolation,
        aborted_transactions=aborted,
    )
    values: list[bytes | None] = []
    while part:
        got = part.take(take)
        assert take is None or len(got) <= take
        values += got
    offsets = sink.take()
    assert len(offsets) == len(values)
    return values, offsets, part.next_fetch_offset


_headers = st.lists(st.tuples(st.text(max_size=5), st.binary(max_size=8)), max_size=2)
_record = st.tuples(
    st.one_of(st.none(), st.binary(max_size=20)),
    st.one_of(st.none(), st.binary(max_size=300)),
    _headers,
)


@st.composite
def _fetches(draw: st.DrawFn) -> tuple[bytes, int, int]:
    """Several batches (gaps as after compaction, some compressed); a fetch offset inside."""
    base = draw(st.integers(0, 1 << 40))
    first = base
    pieces = []
    for _ in range(draw(st.integers(1, 4))):
        n = draw(st.integers(1, 30))
        deltas = sorted(draw(st.sets(st.integers(0, 2 * n), min_size=n, max_size=n)))
        if draw(st.booleans()):
            deltas = list(range(n))  # most batches: contiguous offsets
        recs = [(d, *draw(_record)) for d in deltas]
        codec = CODECS[draw(st.sampled_from(sorted(CODECS)))]
        pieces.append(_batch(base, recs, codec=codec))
        base += deltas[-1] + 1 + draw(st.integers(0, 3))
    fetch = draw(st.integers(first, base + 1))
    return b"".join(pieces), fetch, draw(st.sampled_from([None, 1, 7, 100]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_fetches())
def test_the_fast_parser_hands_over_what_kafka_python_does(fetch):
    data, fetch_offset, take = fetch
    assert _fast(data, fetch_offset, take=take) == _oracle(data, fetch_offset, take=take)
    values, offsets, nxt = parse_records(data, fetch_offset)
    assert (values, offsets, nxt) == _oracle(data, fetch_offset)


@given(_fetches(), st.integers(0, 10_000))
@settings(max_examples=50, deadline=None)
def test_a_truncated_fetch_ends_where_kafka_python_ends(fetch, cut):
    data, fetch_offset, _take = fetch
    cut_data = data[: max(0, len(data) - 1 - cut % len(data))]
    assert _fast(cut_data, fetch_offset) == _oracle(cut_data, fetch_offset)


_LAST = _batch(7, [(0, b"k", b"p7", [("h", b"v")]), (1, None, b"p8", [])])


_TX7 = {"producer_id": 7, "transactional": True}
_TX8 = {"producer_id": 8, "transactional": True}


def _transactions() -> tuple[bytes, list[Any]]:
    """pid 7 commits offsets 0-1 (marker 2), pid 8 aborts 4-5 (marker 6), plain 7-8."""
    data = b"".join(
        [
            _batch(
                0, [(0, None, b"c0", []), (1, None, b"c1", [])], producer_id=7, transactional=True
            ),
            _marker(2, 7, commit=True),
            _batch(
                4, [(0, None, b"a4", []), (1, None, None, [])], producer_id=8, transactional=True
            ),
            _marker(6, 8, commit=False),
            _LAST,
        ]
    )
    return data, [Aborted(producer_id=8, first_offset=4)]


def test_control_batches_and_aborted_transactions_follow_kafka_python():
    data, aborted = _transactions()
    for isolation in (IsolationLevel.READ_UNCOMMITTED, IsolationLevel.READ_COMMITTED):
        for fetch_offset in (0, 2, 3, 4, 6, 7, 9):
            for take in (None, 1):
                args = {"isolation": isolation, "aborted": aborted, "take": take}
                assert _fast(data, fetch_offset, **args) == _oracle(data, fetch_offset, **args)
    assert _fast(data, 0)[0] == [b"c0", b"c1", b"a4", None, b"p7", b"p8"]
    committed = _fast(data, 0, isolation=IsolationLevel.READ_COMMITTED, aborted=aborted)
    assert committed == ([b"c0", b"c1", b"p7", b"p8"], [0, 1, 7, 8], 9)
    # a fetch that ends on a control batch moves past it
    assert _fast(data[: -len(_LAST)], 4) == ([b"a4", None], [4, 5], 7)


def test_a_corrupt_batch_fails_as_in_kafka_python():
    good = _batch(0, [(0, None, b"x" * 50, []), (1, None, b"y", [])])
    bad = bytearray(good)
    bad[-3] ^= 0xFF
    for parse in (_oracle, _fast):
        with pytest.raises(CorruptRecordError, match="crc"):
            parse(bytes(bad), 0)
    # records before the corrupt batch are handed over first, the error at the next take
    data = _batch(0, [(0, None, b"ok", [])]) + struct.pack(">q", 1) + bytes(bad)[8:]
    sink = OffsetSink()
    part = _FastPartitionRecords(
        0, TP, MemoryRecords(data), sink=sink, check_crcs=True,
        isolation_level=IsolationLevel.READ_UNCOMMITTED,
    )  # fmt: skip
    assert part.take(10) == [b"ok"] and sink.take() == [0]
    for _ in range(2):  # and at every take after it: the records behind it are never reached
        with pytest.raises(CorruptRecordError):
            part.take(10)
    assert parse_records(bytes(bad), 0, check_crcs=False)[1] == [0, 1]


def test_unsupported_kafka_python_or_aiokafka_is_refused_with_the_way_out(monkeypatch):
    check_supported()

    class Other:
        def __init__(self, fetch_offset, tp, messages):
            pass

        def take(self, n=None):
            return []

        def drain(self):
            pass

        def _contains_abort_marker(self, batch):
            return False

    monkeypatch.setattr(Fetcher, "PartitionRecords", Other)
    with pytest.raises(RuntimeError, match="STREAMML_KAFKA_FAST_RECORDS=0"):
        check_supported()
    monkeypatch.undo()

    def python_only():
        raise RuntimeError(kafka_records._HINT)

    monkeypatch.setattr(kafka_records, "_c_batch_class", python_only)
    with pytest.raises(RuntimeError, match="fast_records=False"):
        install(object())


def _produce(bootstrap: str, topic: str, compression: str | None, values: list[bytes | None]):
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, compression_type=compression, linger_ms=5, batch_size=4096
    )
    for i, v in enumerate(values):
        headers = [("n", str(i).encode())] if i % 3 == 0 else []
        producer.send(topic, key=b"k%d" % (i % 5), value=v, headers=headers)
        if i % 97 == 0:
            producer.flush()  # many batches of different sizes
    producer.flush()
    producer.close()


def _read_with(reader: KafkaPythonReader, start: int, end: int) -> tuple[list, list]:
    reader.seek(start)
    values: list[bytes | None] = []
    offsets: list[int] = []
    for _ in range(2_000):
        v, o = reader.poll(37, 100)
        values += v
        offsets += o
        if offsets and offsets[-1] >= end - 1:
            break
    return values, offsets


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_on_the_broker_the_fast_reader_reads_what_kafka_python_reads(
    kafka_broker, make_topic, compression
):
    topic = make_topic(1)
    values = [None if i % 11 == 0 else b'{"account":"a%d","ts":%d}' % (i, i) for i in range(1200)]
    _produce(kafka_broker, topic, compression, values)
    cfg = KafkaSourceConfig(brokers=[kafka_broker], topic=topic)
    fast = KafkaPythonReader(cfg, 0)
    slow = KafkaPythonReader(KafkaSourceConfig(brokers=[kafka_broker], topic=topic,
                                               fast_records=False), 0)  # fmt: skip
    try:
        begin, end = fast.watermarks()
        assert (begin, end) == slow.watermarks()
        for start in (0, 1, 250, 1199):
            got = _read_with(fast, start, 1200)
            assert got == _read_with(slow, start, 1200)
            assert got == (values[start:], list(range(start, 1200)))
            assert fast.position() == slow.position() == 1200
            assert fast.high_watermark() == slow.high_watermark() == 1200
    finally:
        fast.close()
        slow.close()
    # and kafka-python's own consumer, ConsumerRecords and all
    consumer = KafkaConsumer(bootstrap_servers=kafka_broker, enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek(tp, 0)
    recs: list[Any] = []
    while len(recs) < 1200:
        recs += consumer.poll(200).get(tp, [])
    consumer.close()
    assert [r.value for r in recs] == values
    assert [r.headers for r in recs][:4] == [[("n", b"0")], [], [], [("n", b"3")]]


def test_on_the_broker_transactions_read_as_kafka_python_reads_them(kafka_broker, make_topic):
    topic = make_topic(1)
    try:
        producer = KafkaProducer(bootstrap_servers=kafka_broker, transactional_id=f"tx-{topic}")
        producer.init_transactions()
        producer.begin_transaction()
        producer.send(topic, value=b"committed-1")
        producer.send(topic, value=b"committed-2")
        producer.commit_transaction()
        producer.begin_transaction()
        producer.send(topic, value=b"aborted")
        producer.flush()
        producer.abort_transaction()
        producer.close()
    except Exception as exc:  # the broker may not do transactions
        pytest.skip(f"transactions not available on this broker: {exc!r}")
    plain = KafkaProducer(bootstrap_servers=kafka_broker)
    plain.send(topic, value=b"after")
    plain.flush()
    plain.close()
    read = {}
    for isolation in ("read_uncommitted", "read_committed"):
        for fast in (True, False):
            consumer = KafkaConsumer(
                bootstrap_servers=kafka_broker,
                enable_auto_commit=False,
                isolation_level=isolation,
            )
            sink = install(consumer) if fast else None
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            consumer.seek(tp, 0)
            got: list[Any] = []
            for _ in range(30):
                batch = consumer.poll(200).get(tp, [])
                got += batch if fast else [r.value for r in batch]
                if got and got[-1] == b"after":
                    break
            if sink is not None:
                assert len(sink.take()) == len(got)
            read[isolation, fast] = (got, consumer.position(tp))
            consumer.close()
        assert read[isolation, True] == read[isolation, False]
    assert read["read_committed", True][0][:2] == [b"committed-1", b"committed-2"]
    assert b"after" in read["read_committed", True][0]
