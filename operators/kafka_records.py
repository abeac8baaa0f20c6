"""Fast record parsing for the kafka-python reader: aiokafka's C record-batch parser.

kafka-python parses fetched records in pure Python (about two thirds of the Kafka flow's main
loop, see benchmarks/RESULTS.md). kafka-python stays the client here (connections, fetch
requests, positions, high watermarks, commits); only the step that turns one fetch response's
raw bytes into records is replaced, by `install(consumer)`, which gives the consumer's fetcher
`_FastPartitionRecords` in place of kafka-python's `Fetcher.PartitionRecords`.

`_FastPartitionRecords` walks the record batches of the fetched bytes as kafka-python's
`MemoryRecords` does and applies kafka-python's rules to each batch, in the same order: CRC
check (`check_crcs`), leader epoch, read_committed filtering of aborted transactions, control
batches skipped, records before the fetch offset skipped, the next fetch offset after a v2 batch
taken from the batch (so compacted or control tails are passed). The records of a v2 (magic 2)
batch are parsed by aiokafka's Cython `DefaultRecordBatch` (a maintained parser of the same
format, compiled: 0.5 CPU-us a record against 6 for kafka-python's, in a microbenchmark); a
batch it cannot decompress (a codec aiokafka lacks), legacy batches (magic 0 and 1) and the
abort marker of a control batch go through kafka-python's own classes. The consumer's `poll`
then hands over each record's value (bytes or None), not a `ConsumerRecord`; the offsets go,
in the same order, to the `OffsetSink` that `install` returns (the reader needs only these two).
A batch that fails (CRC, parse) fails every later take of its fetch.

This relies on private details of kafka-python (3.x): the consumer's `_fetcher`, its nested
`PartitionRecords` class (constructor, the `take`/`drain` contract and the helpers named in
`_NEEDED_METHODS`) and the `_buffer` slot of `MemoryRecords`. `check_supported()` verifies them
and raises `RuntimeError` naming the way out (``KafkaSourceConfig(fast_records=False)``,
``STREAMML_KAFKA_FAST_RECORDS=0``) when the installed kafka-python differs; this module is the
only place that touches them.
"""

from __future__ import annotations

import bisect
import functools
import inspect
import struct
from collections.abc import Callable
from typing import Any

from kafka.consumer.fetcher import Fetcher, IsolationLevel
from kafka.errors import CorruptRecordError
from kafka.record.default_records import DefaultRecordBatch as KafkaPythonBatch
from kafka.record.legacy_records import LegacyRecordBatch
from kafka.record.memory_records import MemoryRecords

__all__ = ["OffsetSink", "check_supported", "install", "parse_records"]

_INT32 = struct.Struct(">i")
_LOG_OVERHEAD = 12  # base offset (int64) + length (int32)
_EPOCH_OFFSET = 12
_MAGIC_OFFSET = 16
_COUNT_OFFSET = 57  # v2 header: record count
_MIN_SLICE = _LOG_OVERHEAD + LegacyRecordBatch.RECORD_OVERHEAD_V0
_NEEDED_PARAMS = (
    "fetch_offset",
    "tp",
    "records",
    "check_crcs",
    "isolation_level",
    "aborted_transactions",
)
_NEEDED_METHODS = (
    "take",
    "drain",
    "_maybe_raise_next_inline_exception",
    "_consume_aborted_transactions_up_to",
    "_is_batch_aborted",
    "_contains_abort_marker",
)
_HINT = (
    "; parse records with kafka-python's own code instead: KafkaSourceConfig(fast_records=False) "
    "or STREAMML_KAFKA_FAST_RECORDS=0 (slower), or install a kafka-python 3.x"
)


@functools.cache
def _c_batch_class() -> Callable[[Any], Any]:
    """Return aiokafka's C `DefaultRecordBatch`; raise `RuntimeError` if only Python is there."""
    try:
        from aiokafka.record.default_records import DefaultRecordBatch
    except ImportError as exc:
        raise RuntimeError(f"fast Kafka record parsing needs aiokafka: {exc}{_HINT}") from exc
    if "_crecords" not in DefaultRecordBatch.__module__:
        raise RuntimeError(
            "fast Kafka record parsing needs aiokafka's C extension, but aiokafka runs without "
            f"it here (AIOKAFKA_NO_EXTENSIONS set, or no compiled wheel for this platform){_HINT}"
        )
    return DefaultRecordBatch


def check_supported() -> None:
    """Raise `RuntimeError` unless the installed kafka-python and aiokafka fit this module."""
    _c_batch_class()
    base = getattr(Fetcher, "PartitionRecords", None)
    if not inspect.isclass(base) or not all(
        callable(getattr(base, m, None)) for m in _NEEDED_METHODS
    ):
        raise RuntimeError(
            "the installed kafka-python has no Fetcher.PartitionRecords with the methods "
            f"{', '.join(_NEEDED_METHODS)} (its fetcher changed){_HINT}"
        )
    params = inspect.signature(base.__init__).parameters
    missing = [p for p in _NEEDED_PARAMS if p not in params]
    if missing or "_buffer" not in getattr(MemoryRecords, "__slots__", ()):
        raise RuntimeError(
            "the installed kafka-python's Fetcher.PartitionRecords or MemoryRecords differ from "
            f"kafka-python 3.x (missing: {missing or ['MemoryRecords._buffer']}){_HINT}"
        )


class OffsetSink:
    """The offsets of the values a consumer's polls returned, in order (see `install`)."""

    __slots__ = ("offsets",)

    def __init__(self) -> None:
        self.offsets: list[int] = []

    def take(self) -> list[int]:
        """Return the offsets collected since the last call and start a new list."""
        out, self.offsets = self.offsets, []
        return out


def install(consumer: Any) -> OffsetSink:
    """Make `consumer` (a kafka-python `KafkaConsumer`) parse fetched records with C code.

    From then on its `poll` returns each partition's record *values* (bytes or None) in place of
    `ConsumerRecord`s, and the returned sink collects their offsets, in the same order: a
    caller reading one partition per consumer takes `sink.take()` after each poll.
    """
    check_supported()
    fetcher = getattr(consumer, "_fetcher", None)
    if not isinstance(fetcher, Fetcher):
        raise RuntimeError(
            f"the installed kafka-python's KafkaConsumer has no _fetcher Fetcher{_HINT}"
        )
    sink = OffsetSink()
    fetcher.PartitionRecords = functools.partial(_FastPartitionRecords, sink=sink)  # type: ignore[misc]
    return sink


# `object` when kafka-python has no such class: `check_supported` then refuses with the way out.
_PartitionRecords: Any = getattr(Fetcher, "PartitionRecords", object)


class _FastPartitionRecords(_PartitionRecords):
    """kafka-python's `PartitionRecords`, parsed by aiokafka's C parser, handing over values."""

    def __init__(
        self,
        fetch_offset: int,
        tp: Any,
        records: MemoryRecords,
        *,
        sink: OffsetSink,
        **kwargs: Any,
    ):
        super().__init__(fetch_offset, tp, records, **kwargs)
        self._sink = sink
        self._buf = memoryview(records._buffer)  # private: checked in check_supported
        self._pos = 0
        self._values: list[bytes | None] = []
        self._offsets: list[int] = []
        self._idx = 0
        self._skipping = True  # records before fetch_offset (mid-batch fetch) are dropped
        self._last_next: int | None = None  # after a v2 batch, the offset that follows it
        self._c_batch = _c_batch_class()
        self._error: Exception | None = None  # a batch that failed: raised by every later take
        # kafka-python's generator stays unstarted: `record_iterator` only marks "not drained".

    def take(self, n: int | None = None) -> list[bytes | None]:
        """Return the values of up to `n` records (their offsets go to the sink)."""
        self._maybe_raise_next_inline_exception()
        if self._error is not None:
            raise self._error
        out: list[bytes | None] = []
        if self.record_iterator is None:
            return out
        want = n if n is not None else len(self._buf) + 1
        sink = self._sink
        try:
            while len(out) < want:
                values, i = self._values, self._idx
                if i >= len(values):
                    if not self._next_records():
                        if self._last_next is not None:
                            self.next_fetch_offset = self._last_next
                        self.drain()
                        break
                    continue
                j = min(len(values), i + want - len(out))
                if i == 0 and j == len(values):
                    out += values
                    sink.offsets += self._offsets
                else:
                    out += values[i:j]
                    sink.offsets += self._offsets[i:j]
                self._idx = j
                self.records_read += j - i
                self.next_fetch_offset = self._offsets[j - 1] + 1
        except Exception as exc:
            self._error = exc  # never skip past a corrupt batch to the records after it
            if not out:
                raise
            self._next_inline_exception = exc  # raised by the next take, as kafka-python does
        return out

    def _next_records(self) -> bool:
        """Load the next batch's values and offsets; False when the fetched bytes are done."""
        buf = self._buf
        size = len(buf)
        while True:
            pos = self._pos
            if size - pos < _LOG_OVERHEAD:
                return False
            end = pos + _LOG_OVERHEAD + _INT32.unpack_from(buf, pos + 8)[0]
            if end > size:  # a partial batch at the end of the fetch: kafka-python ignores it
                return False
            piece = buf[pos:end]
            if len(piece) < _MIN_SLICE:
                raise CorruptRecordError(
                    "Record size is less than the minimum record overhead "
                    f"({_MIN_SLICE - _LOG_OVERHEAD})"
                )
            self._pos = end
            self.bytes_read += end - pos
            magic = piece[_MAGIC_OFFSET]
            parsed = self._legacy(piece, magic) if magic < 2 else self._v2(piece)
            if parsed is None or not parsed[0]:
                continue
            values, offsets = parsed
            if self._skipping:
                k = bisect.bisect_left(offsets, self.fetch_offset)
                if k == len(offsets):
                    continue
                self._skipping = False
                if k:
                    values, offsets = values[k:], offsets[k:]
            self._values, self._offsets, self._idx = values, offsets, 0
            return True

    def _crc_error(self, base_offset: int) -> CorruptRecordError:
        return CorruptRecordError(
            f"Record batch for partition {self.topic_partition} at offset {base_offset} "
            "failed crc check"
        )

    def _legacy(self, piece: memoryview, magic: int) -> tuple[list[Any], list[int]]:
        self._last_next = None
        batch = LegacyRecordBatch(piece, magic)
        if self.check_crcs and not batch.validate_crc():
            raise self._crc_error(batch.base_offset)
        recs = list(batch)
        return [r.value for r in recs], [r.offset for r in recs]

    def _v2(self, piece: memoryview) -> tuple[list[Any], list[int]] | None:
        """Return the values and offsets of one v2 batch, or None for a batch that yields none."""
        batch = self._c_batch(piece)
        if self.check_crcs and not batch.validate_crc():
            raise self._crc_error(batch.base_offset)
        self.leader_epoch = _INT32.unpack_from(piece, _EPOCH_OFFSET)[0]
        self._last_next = batch.next_offset
        if self.isolation_level == IsolationLevel.READ_COMMITTED and batch.producer_id > -1:
            self._consume_aborted_transactions_up_to(batch.next_offset - 1)
            if batch.is_control_batch:
                if self._contains_abort_marker(KafkaPythonBatch(piece)):
                    self.aborted_producer_ids.discard(batch.producer_id)
            elif self._is_batch_aborted(batch):
                self.next_fetch_offset = batch.next_offset
                return None
        if batch.is_control_batch:
            self.next_fetch_offset = batch.next_offset
            return None
        count = _INT32.unpack_from(piece, _COUNT_OFFSET)[0]
        try:
            if count == batch.last_offset_delta + 1:  # no record removed: offsets are contiguous
                values = [r.value for r in batch]  # each record object freed at once
                if len(values) == count:
                    base = batch.base_offset
                    return values, list(range(base, base + count))
                batch = self._c_batch(piece)  # fewer records than the header says: go by each
            recs = list(batch)
        except Exception as exc:
            if type(exc).__name__ != "UnsupportedCodecError":
                raise
            recs = list(KafkaPythonBatch(piece))  # a codec only kafka-python has
        return [r.value for r in recs], [r.offset for r in recs]


def parse_records(
    data: bytes, fetch_offset: int = 0, *, check_crcs: bool = True
) -> tuple[list[bytes | None], list[int], int]:
    """Parse one fetch response's record bytes as the kafka-python reader does (tests, tools).

    Return the values and offsets of the records at or after `fetch_offset` (read_uncommitted:
    control batches dropped) and the next fetch offset.
    """
    from kafka.structs import TopicPartition

    sink = OffsetSink()
    part = _FastPartitionRecords(
        fetch_offset,
        TopicPartition("parse", 0),
        MemoryRecords(data),
        sink=sink,
        check_crcs=check_crcs,
        isolation_level=IsolationLevel.READ_UNCOMMITTED,
    )
    values: list[bytes | None] = []
    while part:
        values += part.take(None)
    return values, sink.take(), part.next_fetch_offset
