"""The Kafka client seam: one small interface, implemented on kafka-python and confluent-kafka.

`KafkaSource` and the Kafka sinks (`streamml.operators.kafka`) hold everything that does not
depend on the client: where a partition starts and ends, batching into `RecordList`s, snapshots,
group commits for monitoring, encoding alerts and dead letters, the errors raised. They talk to
the client only through the two classes here:

- `PartitionReader`: one assigned topic partition (never a group member, never auto-commit);
  `poll` returns the raw values and offsets ready now.
- `RecordProducer`: an idempotent producer (`acks=all`) whose `flush` says how many records
  are still unacknowledged and whose `take_errors` reports the refused ones.

`open_reader` / `open_producer` pick the implementation named by the config's `client`:
``kafka-python`` (the default, here) or ``confluent`` (librdkafka, in
`streamml.operators.kafka_confluent`, imported only when chosen; install it with
``pip install 'streamml[confluent]'``). With `kafka_confluent`, this is the only module that
imports a Kafka client for reading and writing records.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata
from streamml.operators import kafka_records
from streamml.operators.kafka_records import OffsetSink

if TYPE_CHECKING:
    from streamml.operators.kafka import KafkaSinkConfig, KafkaSourceConfig

__all__ = [
    "KAFKA_CLIENTS",
    "KafkaClient",
    "PartitionReader",
    "RecordProducer",
    "check_client",
    "open_producer",
    "open_reader",
]

log = logging.getLogger(__name__)

KafkaClient = Literal["kafka-python", "confluent"]
KAFKA_CLIENTS: tuple[str, ...] = ("kafka-python", "confluent")
"""The Kafka clients the source and sinks can run on; the first is the default."""

_CONFLUENT_HINT = (
    "the confluent Kafka client needs the confluent-kafka package, which is not installed; "
    "install it with pip install 'streamml[confluent]' (or pip install confluent-kafka), or "
    "use --kafka-client kafka-python"
)

Headers = list[tuple[str, bytes]]


def check_client(client: object, what: str) -> None:
    """Raise `ValueError` unless `client` is one of `KAFKA_CLIENTS`."""
    if client not in KAFKA_CLIENTS:
        raise ValueError(f"{what}.client: expected one of {KAFKA_CLIENTS}, got {client!r}")


class PartitionReader(Protocol):
    """One topic partition, assigned (no group membership, no auto-commit)."""

    def watermarks(self) -> tuple[int, int]:
        """Return `(first offset kept, end offset)` as the broker lists them (ListOffsets)."""
        ...

    def seek(self, offset: int) -> None:
        """Read from `offset` on; records fetched before are dropped."""
        ...

    def poll(self, max_records: int, timeout_ms: int) -> tuple[list[bytes | None], Sequence[int]]:
        """Return the values and offsets of up to `max_records` records ready within the wait.

        The offsets increase; they may be a `range` when they follow one another.
        """
        ...

    def high_watermark(self) -> int | None:
        """Return the end offset the last fetch response reported, or None before one."""
        ...

    def position(self) -> int | None:
        """Return the offset of the next record the reader will return, when known."""
        ...

    def commit(self, offset: int, *, wait: bool) -> None:
        """Commit `offset` to the config's group (raises on a failed synchronous commit)."""
        ...

    def close(self) -> None:
        """Close the connection (commits nothing)."""
        ...


class RecordProducer(Protocol):
    """An idempotent producer (acks=all) that counts the records the broker refused."""

    def send(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers) -> None:
        """Hand one record to the producer (it leaves within `linger_ms`)."""
        ...

    def poll(self) -> None:
        """Collect acknowledgements that arrived, without waiting."""
        ...

    def flush(self, timeout_s: float) -> int:
        """Wait until every record sent is acknowledged or refused; return how many are neither."""
        ...

    def take_errors(self) -> tuple[int, BaseException | None]:
        """Return (records refused since the last call, the first such error) and reset."""
        ...

    def close(self, timeout_s: float) -> None:
        """Flush and close."""
        ...


def open_reader(config: KafkaSourceConfig, partition: int) -> PartitionReader:
    """Return a reader of `partition` of `config.topic` on the client `config.client` names."""
    if config.client == "confluent":
        return _confluent().ConfluentReader(config, partition)
    return KafkaPythonReader(config, partition)


def open_producer(config: KafkaSinkConfig) -> RecordProducer:
    """Return an idempotent producer on the client `config.client` names."""
    if config.client == "confluent":
        return _confluent().ConfluentProducer(config)
    return KafkaPythonProducer(config)


def _confluent() -> Any:
    try:
        from streamml.operators import kafka_confluent
    except ImportError as exc:
        if exc.name is not None and exc.name.startswith("confluent_kafka"):
            raise ImportError(_CONFLUENT_HINT, name=exc.name) from exc
        raise
    return kafka_confluent


class KafkaPythonReader:
    """`PartitionReader` on kafka-python's `KafkaConsumer` (one per partition).

    With `config.fast_records` (the default) the fetched records are parsed by aiokafka's C
    record parser (`streamml.operators.kafka_records`) in place of kafka-python's pure-Python
    one; kafka-python still does everything else.
    """

    def __init__(self, config: KafkaSourceConfig, partition: int) -> None:
        self._tp = TopicPartition(config.topic, partition)
        self._group = config.group_id
        self._name = f"{config.topic}:{partition}"
        self._consumer = KafkaConsumer(**config.consumer_kwargs())
        self._offsets: OffsetSink | None = None
        try:
            if config.fast_records:
                self._offsets = kafka_records.install(self._consumer)
            self._consumer.assign([self._tp])
        except BaseException:
            self._consumer.close(autocommit=False)
            raise

    def watermarks(self) -> tuple[int, int]:
        """Return the listed first and end offsets."""
        tp = self._tp
        begin = self._consumer.beginning_offsets([tp])[tp]
        end = self._consumer.end_offsets([tp])[tp]
        return begin, end

    def seek(self, offset: int) -> None:
        """Read from `offset` on."""
        self._consumer.seek(self._tp, offset)

    def poll(self, max_records: int, timeout_ms: int) -> tuple[list[bytes | None], Sequence[int]]:
        """Return the values and offsets of the records ready now."""
        if self._offsets is not None:
            self._offsets.take()  # nothing left over from a poll that raised
        polled = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        records = polled.get(self._tp) if polled else None
        if self._offsets is not None:  # fast parsing: values, their offsets in the sink
            offsets = self._offsets.take()
            if not records:
                return [], []
            if len(offsets) != len(records):
                raise RuntimeError(
                    f"{self._name}: the fast record parser handed over {len(records)} values "
                    f"and {len(offsets)} offsets; expected as many of each (a kafka-python "
                    "change?): set STREAMML_KAFKA_FAST_RECORDS=0 and report it"
                )
            return records, offsets
        if not records:
            return [], []
        first, last = records[0].offset, records[-1].offset
        if last - first + 1 == len(records):  # offsets increase: these are first..last
            return [r.value for r in records], range(first, last + 1)
        return [r.value for r in records], [r.offset for r in records]

    def high_watermark(self) -> int | None:
        """Return the high watermark of the last fetch."""
        return self._consumer.highwater(self._tp)

    def position(self) -> int | None:
        """Return the consumer's position."""
        return self._consumer.position(self._tp)

    def commit(self, offset: int, *, wait: bool) -> None:
        """Commit `offset` (asynchronously unless `wait`; async failures are logged)."""
        offsets = {self._tp: OffsetAndMetadata(offset, "", -1)}
        if wait:
            self._consumer.commit(offsets, timeout_ms=5_000)
        else:
            self._consumer.commit_async(offsets, callback=self._on_commit)

    def _on_commit(self, offsets: object, response: object) -> None:
        if isinstance(response, Exception):
            log.warning("%s: committing to group %r failed: %r", self._name, self._group, response)

    def close(self) -> None:
        """Close without committing."""
        self._consumer.close(autocommit=False)


class KafkaPythonProducer:
    """`RecordProducer` on kafka-python's `KafkaProducer`, tracking each record's future."""

    _CHECK_EVERY = 10_000

    def __init__(self, config: KafkaSinkConfig) -> None:
        self._producer = KafkaProducer(**config.producer_kwargs())
        self._futures: list[Any] = []
        self._failed = 0
        self._first: BaseException | None = None

    def send(self, topic: str, key: bytes | None, value: bytes | None, headers: Headers) -> None:
        """Send one record."""
        try:
            future = self._producer.send(topic, key=key, value=value, headers=headers)
        except KafkaError as exc:  # refused before sending (e.g. too large): counted
            self._failed += 1
            if self._first is None:
                self._first = exc
            return
        self._futures.append(future)

    def poll(self) -> None:
        """Count the refused records once many are outstanding (kafka-python's I/O thread acks)."""
        if len(self._futures) > self._CHECK_EVERY:
            self._collect()

    def _collect(self) -> None:
        """Drop the futures that completed, counting the failed ones."""
        pending = []
        for f in self._futures:
            if not f.is_done:
                pending.append(f)
            elif f.failed():
                self._failed += 1
                if self._first is None:
                    self._first = f.exception
        self._futures = pending

    def flush(self, timeout_s: float) -> int:
        """Wait for every acknowledgement; return how many records are still pending."""
        with contextlib.suppress(KafkaTimeoutError):
            self._producer.flush(timeout=timeout_s)
        self._collect()
        return len(self._futures)

    def take_errors(self) -> tuple[int, BaseException | None]:
        """Return and reset the refused count and first error."""
        out = (self._failed, self._first)
        self._failed, self._first = 0, None
        return out

    def close(self, timeout_s: float) -> None:
        """Flush and close."""
        self._producer.close(timeout=timeout_s)
