"""Decode the events of a declared source (`streamml.state.definitions.SourceDef`).

A valid event is a JSON object (or a CSV row under a header naming the columns) whose key field is
a non-empty string of at most 256 UTF-8 bytes, whose time field is an integer >= 0 in epoch
milliseconds (``time_format = "epoch_ms"``; a number equal to an integer is accepted) or an
ISO-8601 string with a UTC offset (``"iso8601"``), and whose every number field read by a feature
is a finite number of magnitude at most `MAX_ABS_VALUE`. Anything else is a dead letter whose
reason names the field: ``missing_F``, ``bad_F``, ``negative_F``, ``F_too_long``; and ``not_json``,
``not_object``, ``not_utf8``, ``blank``, ``bad_csv``, ``null_value`` as for signal errors.

An event whose filter field is not one of the allowed values is valid but not the source's: it is
dropped and counted (`Decoded.filtered`), never a dead letter.

A batch whose every record is valid is decoded by Arrow's JSON reader; otherwise every record is
decoded on its own by the line decoder, which defines the semantics.
"""

from __future__ import annotations

import csv
import functools
import math
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from streamml.operators.decode import (
    MAX_ACCOUNT_BYTES,
    Decoded,
    DecodeOutputs,
    InvalidRecord,
    decode_events,
    json_object,
    one_line_values,
    read_json_lines,
)
from streamml.operators.records import (
    DEAD_LETTER_RAW_LIMIT,
    DeadLetter,
    EventBatch,
    LinesChunk,
    RecordList,
    positions_array,
)
from streamml.state.definitions import FeatureDef, SourceDef
from streamml.state.feature_records import MAX_ABS_VALUE

__all__ = ["SourceSchema", "decode_source", "decode_source_events"]

_MAX_TS = (1 << 63) - 1


@dataclass(frozen=True)
class SourceSchema:
    """What decoding a source checks: its key, time, the number fields its features read."""

    source: SourceDef
    numbers: tuple[str, ...] = ()

    @classmethod
    def of(cls, source: SourceDef, features: tuple[FeatureDef, ...]) -> SourceSchema:
        """Return the schema of `source` for the fields `features` read."""
        used = tuple(dict.fromkeys(f.field for f in features if f.field is not None))
        return cls(source, used)

    @property
    def arrow_schema(self) -> pa.Schema:
        """The explicit schema of Arrow's JSON reader on the fast path."""
        s = self.source
        time_type = pa.int64() if s.time_format == "epoch_ms" else pa.string()
        fields = [pa.field(s.key, pa.string()), pa.field(s.time, time_type)]
        fields += [pa.field(n, pa.float64()) for n in self.numbers]
        for name, allowed in s.filters.items():
            if name not in self.numbers and name not in (s.key, s.time):
                kind = pa.string() if all(isinstance(v, str) for v in allowed) else pa.float64()
                fields.append(pa.field(name, kind))
        return pa.schema(fields)


def _key(schema: SourceSchema, value: object) -> bytes:
    name = schema.source.key
    if value is None:
        raise InvalidRecord(f"missing_{name}")
    if not isinstance(value, str):
        raise InvalidRecord(f"bad_{name}", f"{name} must be a string, got {type(value).__name__}")
    if not value:
        raise InvalidRecord(f"bad_{name}", f"{name} is empty")
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRecord(f"bad_{name}", f"{name} is not valid unicode") from exc
    if len(raw) > MAX_ACCOUNT_BYTES:
        raise InvalidRecord(f"{name}_too_long", f"{len(raw)} bytes > {MAX_ACCOUNT_BYTES}")
    return raw


def _time(schema: SourceSchema, value: object) -> int:
    name = schema.source.time
    if value is None:
        raise InvalidRecord(f"missing_{name}")
    if schema.source.time_format == "iso8601":
        if not isinstance(value, str):
            raise InvalidRecord(f"bad_{name}", f"{name} must be an ISO-8601 string")
        try:
            moment = datetime.fromisoformat(value)
        except ValueError as exc:
            raise InvalidRecord(f"bad_{name}", f"not ISO-8601: {value[:40]!r}") from exc
        if moment.tzinfo is None:
            raise InvalidRecord(f"bad_{name}", f"{value[:40]!r} has no UTC offset")
        ts = round(moment.timestamp() * 1000)
    else:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidRecord(
                f"bad_{name}", f"{name} must be an integer, got {type(value).__name__}"
            )
        if isinstance(value, float):
            if not math.isfinite(value) or not value.is_integer():
                raise InvalidRecord(f"bad_{name}", f"{name} must be an integer, got {value!r}")
            value = int(value)
        ts = value
    if ts < 0:
        raise InvalidRecord(f"negative_{name}", str(ts))
    if ts > _MAX_TS:
        raise InvalidRecord(f"bad_{name}", f"{ts} is out of range")
    return ts


def _number(name: str, value: object) -> float:
    if value is None:
        raise InvalidRecord(f"missing_{name}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRecord(f"bad_{name}", f"{name} must be a number, got {type(value).__name__}")
    x = float(value)
    if not math.isfinite(x) or abs(x) > MAX_ABS_VALUE:
        raise InvalidRecord(f"bad_{name}", f"{name} must be finite and at most {MAX_ABS_VALUE:g}")
    return x


def _allowed(value: object, allowed: tuple) -> bool:
    if isinstance(value, bool):
        return False
    return value in allowed


def _decode_object(schema: SourceSchema, obj: dict) -> tuple[bytes, int, list[float]] | None:
    """Return ``(key, ts, numbers)`` of one event, or None when a filter drops it."""
    s = schema.source
    key = _key(schema, obj.get(s.key))
    ts = _time(schema, obj.get(s.time))
    numbers = [_number(n, obj.get(n)) for n in schema.numbers]
    for name, allowed in s.filters.items():
        if not _allowed(obj.get(name), allowed):
            return None
    return key, ts, numbers


def _json_object(raw: bytes) -> dict:
    if not raw.strip():
        raise InvalidRecord("blank")
    return json_object(raw)


class _CsvObject:
    """Turn one CSV line into an object: numbers parsed where a number field is read."""

    def __init__(self, schema: SourceSchema, header: tuple[str, ...]) -> None:
        self.header = header
        s = schema.source
        self.numeric = set(schema.numbers)
        if s.time_format == "epoch_ms":
            self.numeric.add(s.time)
        self.numeric |= {
            n for n, allowed in s.filters.items() if not all(isinstance(v, str) for v in allowed)
        }

    def __call__(self, raw: bytes) -> dict:
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if not line.strip():
            raise InvalidRecord("blank")
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRecord("not_utf8") from exc
        try:
            rows = list(csv.reader([text], strict=True))
        except csv.Error as exc:
            raise InvalidRecord("bad_csv", str(exc)) from exc
        if len(rows) != 1 or len(rows[0]) != len(self.header):
            got = len(rows[0]) if rows else 0
            raise InvalidRecord("bad_csv", f"expected {len(self.header)} fields, got {got}")
        obj: dict[str, object] = {}
        for name, cell in zip(self.header, rows[0], strict=True):
            if cell == "":
                obj[name] = None
            elif name in self.numeric:
                try:
                    obj[name] = int(cell) if cell.lstrip("+-").isdigit() else float(cell)
                except ValueError:
                    obj[name] = cell
            else:
                obj[name] = cell
        return obj


class _Builder:
    def __init__(self, schema: SourceSchema, partition: str) -> None:
        self.schema = schema
        self.partition = partition
        self.keys: list[bytes] = []
        self.ts: list[int] = []
        self.numbers: list[list[float]] = []
        self.positions: list[int] = []
        self.dead: list[DeadLetter] = []
        self.filtered = 0

    def add(self, raw: bytes, position: int, parse) -> None:
        try:
            event = _decode_object(self.schema, parse(raw))
        except InvalidRecord as exc:
            self.dead.append(
                DeadLetter(
                    exc.reason, raw[:DEAD_LETTER_RAW_LIMIT], self.partition, position, exc.detail
                )
            )
            return
        if event is None:
            self.filtered += 1
            return
        key, ts, numbers = event
        self.keys.append(key)
        self.ts.append(ts)
        self.numbers.append(numbers)
        self.positions.append(position)

    def batch(self) -> EventBatch:
        width = len(self.schema.numbers)
        values = np.array(self.numbers, dtype=np.float64).reshape(len(self.ts), width)
        fields = {n: values[:, i].copy() for i, n in enumerate(self.schema.numbers)}
        return EventBatch(
            self.partition,
            pa.array(self.keys, type=pa.binary()),
            np.array(self.ts, dtype=np.int64),
            np.array(self.positions, dtype=np.int64),
            fields=fields,
        )


def _fast(schema: SourceSchema, data: bytes, n: int, partition: str, positions: np.ndarray):
    """Decode `n` JSON lines with Arrow when every one is a valid event, else return None."""
    if schema.source.time_format != "epoch_ms":
        return None
    table = read_json_lines(data, schema.arrow_schema)
    s = schema.source
    if table is None or table.num_rows != n:
        return None
    keys = table.column(s.key).combine_chunks()
    ts_col = table.column(s.time).combine_chunks()
    if keys.null_count or ts_col.null_count:
        return None
    ts = ts_col.to_numpy()
    lengths = pc.binary_length(keys)
    if n and (
        ts.min() < 0 or pc.min(lengths).as_py() == 0 or pc.max(lengths).as_py() > MAX_ACCOUNT_BYTES
    ):
        return None
    fields = {}
    for name in schema.numbers:
        col = table.column(name).combine_chunks()
        if col.null_count:
            return None
        x = col.to_numpy(zero_copy_only=False).astype(np.float64)
        if not np.isfinite(x).all() or (np.abs(x) > MAX_ABS_VALUE).any():
            return None
        fields[name] = x
    keep = np.ones(n, dtype=bool)
    for name, allowed in s.filters.items():
        col = table.column(name).combine_chunks()
        if col.null_count:
            return None
        keep &= pc.is_in(col, value_set=pa.array(allowed, type=col.type)).to_numpy(
            zero_copy_only=False
        )
    filtered = int(n - keep.sum())
    if filtered:
        idx = np.flatnonzero(keep)
        keys = keys.take(pa.array(idx))
        ts, positions = ts[idx], positions[idx]
        fields = {k: v[idx] for k, v in fields.items()}
    events = EventBatch(partition, keys.cast(pa.binary()), ts, positions, fields=fields)
    return events, filtered


def decode_source(schema: SourceSchema, item: LinesChunk | RecordList) -> Decoded:
    """Decode a chunk of lines or a list of records of the source into events and dead letters."""
    if isinstance(item, RecordList):
        values = item.values
        data = one_line_values(values)
        if data is not None:
            fast = _fast(schema, data, len(values), item.partition, positions_array(item.positions))
            if fast is not None:
                events, filtered = fast
                return Decoded(events, [], len(values), len(data) - len(values) + 1, 0, filtered)
        builder = _Builder(schema, item.partition)
        size = 0
        for value, position in zip(values, item.positions, strict=True):
            if value is None:
                builder.dead.append(DeadLetter("null_value", b"", item.partition, position))
                continue
            size += len(value)
            builder.add(value, position, _json_object)
        return Decoded(builder.batch(), builder.dead, len(values), size, 0, builder.filtered)
    data = item.data
    buf = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(buf == 10)
    ends = newlines if not len(buf) or buf[-1] == 10 else np.append(newlines, len(buf))
    starts = np.concatenate([[0], newlines[: len(ends) - 1] + 1]).astype(np.int64)
    if not len(ends):
        starts = starts[:0]
    if item.fmt == "jsonl" and len(starts):
        fast = _fast(schema, data, len(starts), item.partition, item.base + starts)
        if fast is not None:
            events, filtered = fast
            return Decoded(events, [], len(starts), len(data), 0, filtered)
    parse = _json_object if item.fmt == "jsonl" else _CsvObject(schema, item.header or ())
    builder = _Builder(schema, item.partition)
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        builder.add(data[s:e], item.base + s, parse)
    return Decoded(builder.batch(), builder.dead, len(starts), len(data), 0, builder.filtered)


def decode_source_events(step_id: str, up, schema: SourceSchema) -> DecodeOutputs:
    """Decode a source's raw batches against its schema (see `decode_events`)."""
    return decode_events(step_id, up, functools.partial(decode_source, schema))
