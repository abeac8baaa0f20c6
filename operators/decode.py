"""Decode raw records into validated signal-error events; everything else is a dead letter.

A valid event is a JSON object (or a CSV row under a header naming the columns) with a non-empty
string `account` of at most 256 UTF-8 bytes and an integer `ts` >= 0 in epoch milliseconds (a
number equal to an integer is accepted). `code` is optional; other fields are ignored.

A CSV chunk whose every line is a valid event is decoded by Arrow's CSV reader; otherwise lines
that are plain printable ASCII with the right number of commas and a digits-only `ts` are decoded
column-wise with numpy, and every other line goes through the line-by-line decoder, which defines
the semantics. All three give the same result for every line.
"""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
from bytewax import operators as op
from bytewax.dataflow import Stream, operator
from streamml.operators.records import (
    DEAD_LETTER_RAW_LIMIT,
    DeadLetter,
    EventBatch,
    LinesChunk,
    RecordList,
    positions_array,
)

__all__ = [
    "MAX_ACCOUNT_BYTES",
    "DecodeOutputs",
    "Decoded",
    "decode_chunk",
    "decode_events",
    "decode_json_value",
    "decode_records",
    "one_line_values",
]

MAX_ACCOUNT_BYTES = 256
_MAX_TS = (1 << 63) - 1
_FAST_TS_DIGITS = 18
_INTEGER = re.compile(r"[+-]?[0-9]+")


@dataclass(frozen=True, slots=True)
class Decoded:
    """The result of decoding one raw batch: the valid events and the dead letters.

    `filtered` counts valid records a source's filters dropped.
    """

    events: EventBatch
    dead: list[DeadLetter]
    read: int
    bytes_read: int = 0
    held_back: int = 0
    filtered: int = 0

    def reasons(self) -> Counter[str]:
        """Count the dead letters by reason."""
        return Counter(d.reason for d in self.dead)


class InvalidRecord(Exception):
    """A record that is not a valid event: `reason` (a dead letter's) and a `detail`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


def _check_account(account: object) -> bytes:
    if account is None:
        raise InvalidRecord("missing_account")
    if not isinstance(account, str):
        raise InvalidRecord(
            "bad_account", f"account must be a string, got {type(account).__name__}"
        )
    if not account:
        raise InvalidRecord("bad_account", "account is empty")
    raw = account.encode("utf-8", errors="surrogatepass")
    if len(raw) > MAX_ACCOUNT_BYTES:
        raise InvalidRecord("account_too_long", f"{len(raw)} bytes > {MAX_ACCOUNT_BYTES}")
    try:
        account.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRecord("bad_account", "account is not valid unicode") from exc
    return raw


def _check_ts_number(ts: object) -> int:
    if ts is None:
        raise InvalidRecord("missing_ts")
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise InvalidRecord("bad_ts", f"ts must be an integer, got {type(ts).__name__}")
    if isinstance(ts, float):
        if not math.isfinite(ts):
            raise InvalidRecord("bad_ts", "ts is not finite")
        if not ts.is_integer():
            raise InvalidRecord("bad_ts", f"ts must be an integer, got {ts!r}")
        ts = int(ts)
    if ts < 0:
        raise InvalidRecord("negative_ts", str(ts))
    if ts > _MAX_TS:
        raise InvalidRecord("ts_out_of_range", str(ts))
    return ts


def _check_ts_text(text: str) -> int:
    s = text.strip()
    if not s:
        raise InvalidRecord("missing_ts")
    if not s.isascii():
        raise InvalidRecord("bad_ts", f"ts must be an integer, got {text[:40]!r}")
    if _INTEGER.fullmatch(s):
        return _check_ts_number(int(s))
    try:
        value = float(s)
    except ValueError as exc:
        raise InvalidRecord("bad_ts", f"ts must be an integer, got {text[:40]!r}") from exc
    if "_" in s:
        raise InvalidRecord("bad_ts", f"ts must be an integer, got {text[:40]!r}")
    return _check_ts_number(value)


def json_object(value: bytes) -> dict:
    """Parse one JSON object; raises `InvalidRecord` (not_utf8, not_json, not_object)."""
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRecord("not_utf8") from exc
        raise InvalidRecord("not_json", str(exc)[:200]) from exc
    if not isinstance(obj, dict):
        raise InvalidRecord("not_object", f"got {type(obj).__name__}")
    return obj


def decode_json_value(value: bytes) -> tuple[bytes, int]:
    """Decode one JSON event into `(account, ts)`; raises `InvalidRecord` with the reason."""
    obj = json_object(value)
    return _check_account(obj.get("account")), _check_ts_number(obj.get("ts"))


def _dead(reason: str, raw: bytes, partition: str, position: int, detail: str = "") -> DeadLetter:
    return DeadLetter(reason, raw[:DEAD_LETTER_RAW_LIMIT], partition, position, detail)


class _Builder:
    """Collects events and dead letters of one partition in position order."""

    def __init__(self, partition: str) -> None:
        self.partition = partition
        self.accounts: list[bytes] = []
        self.ts: list[int] = []
        self.positions: list[int] = []
        self.dead: list[DeadLetter] = []

    def line(self, raw: bytes, position: int, decode) -> None:
        try:
            account, ts = decode(raw)
        except InvalidRecord as exc:
            self.dead.append(_dead(exc.reason, raw, self.partition, position, exc.detail))
            return
        self.accounts.append(account)
        self.ts.append(ts)
        self.positions.append(position)

    def batch(self) -> EventBatch:
        return EventBatch(
            self.partition,
            pa.array(self.accounts, type=pa.binary()),
            np.array(self.ts, dtype=np.int64),
            np.array(self.positions, dtype=np.int64),
        )


def _json_line(raw: bytes) -> tuple[bytes, int]:
    if not raw.strip():
        raise InvalidRecord("blank")
    return decode_json_value(raw)


class _CsvLine:
    def __init__(self, header: tuple[str, ...]) -> None:
        self.header = header
        try:
            self.i_account = header.index("account")
            self.i_ts = header.index("ts")
        except ValueError:
            self.i_account = self.i_ts = -1

    def __call__(self, raw: bytes) -> tuple[bytes, int]:
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if not line.strip():
            raise InvalidRecord("blank")
        if self.i_account < 0:
            raise InvalidRecord("bad_csv", f"header {list(self.header)} lacks account and ts")
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
        row = rows[0]
        return _check_account(row[self.i_account] or None), _check_ts_text(row[self.i_ts])


def _line_starts(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return start and end (exclusive, newline dropped) of every line of `buf`."""
    newlines = np.flatnonzero(buf == 10)
    ends = newlines
    if len(buf) and buf[-1] != 10:
        ends = np.append(newlines, len(buf))
    starts = np.empty(len(ends), dtype=np.int64)
    if len(ends):
        starts[0] = 0
        starts[1:] = newlines[: len(ends) - 1] + 1
    return starts, ends.astype(np.int64)


def _gather(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """Build a binary array of the byte ranges `[starts, starts + lengths)` of `buf`."""
    offsets = np.zeros(len(starts) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    idx = np.arange(total, dtype=np.int64) + np.repeat(starts - offsets[:-1], lengths)
    data = buf[idx]
    return pa.Array.from_buffers(
        pa.binary(), len(starts), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )


def _parse_digits(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Parse digits-only fields of 1..18 characters into int64."""
    out = np.zeros(len(starts), dtype=np.int64)
    for length in np.unique(lengths).tolist():
        rows = np.flatnonzero(lengths == length)
        digits = buf[starts[rows][:, None] + np.arange(length)[None, :]].astype(np.int64) - 48
        out[rows] = digits @ (10 ** np.arange(length - 1, -1, -1, dtype=np.int64))
    return out


def _valid_columns(table: pa.Table, rows: int) -> tuple[pa.Array, np.ndarray] | None:
    """Return the account and ts columns if `table` has `rows` rows of valid events, else None."""
    if table.num_rows != rows:
        return None
    accounts = table.column("account").combine_chunks()
    ts_col = table.column("ts").combine_chunks()
    if accounts.null_count or ts_col.null_count:
        return None
    ts = ts_col.to_numpy()
    if not len(ts):
        return accounts, ts
    lengths = pc.binary_length(accounts)
    if ts.min() < 0 or pc.min(lengths).as_py() == 0 or pc.max(lengths).as_py() > MAX_ACCOUNT_BYTES:
        return None
    return accounts, ts


def _decode_csv_arrow(chunk: LinesChunk, starts: np.ndarray) -> Decoded | None:
    """Decode a chunk whose every line is a valid event with Arrow's CSV reader, else None."""
    header = chunk.header or ()
    data = chunk.data
    if "account" not in header or "ts" not in header or b'"' in data or b"\r" in data:
        return None
    try:
        table = pacsv.read_csv(
            pa.py_buffer(data),
            read_options=pacsv.ReadOptions(
                column_names=list(header), block_size=8 << 20, use_threads=False
            ),
            parse_options=pacsv.ParseOptions(newlines_in_values=False, ignore_empty_lines=False),
            convert_options=pacsv.ConvertOptions(
                column_types={"account": pa.binary(), "ts": pa.int64()},
                include_columns=["account", "ts"],
                strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    columns = _valid_columns(table, len(starts))
    if columns is None:
        return None
    accounts, ts = columns
    try:
        accounts.cast(pa.string())
    except pa.ArrowInvalid:
        return None
    events = EventBatch(chunk.partition, accounts, ts, chunk.base + starts)
    return Decoded(events, [], len(starts), len(data))


def _decode_csv(chunk: LinesChunk) -> Decoded:
    header = chunk.header or ()
    slow = _CsvLine(header)
    buf = np.frombuffer(chunk.data, dtype=np.uint8)
    starts, ends = _line_starts(buf)
    whole = _decode_csv_arrow(chunk, starts)
    if whole is not None:
        return whole
    n_lines = len(starts)
    fast = np.zeros(n_lines, dtype=bool)
    fields = len(header)
    comma_pos = np.flatnonzero(buf == 44)
    if slow.i_account >= 0 and n_lines:
        bad = (buf < 0x20) | (buf > 0x7E) | (buf == 0x22)
        bad_pos = np.flatnonzero(bad & (buf != 10))
        clean = np.searchsorted(bad_pos, ends) == np.searchsorted(bad_pos, starts)
        commas = np.searchsorted(comma_pos, ends) - np.searchsorted(comma_pos, starts)
        fast = clean & (commas == fields - 1)
    events_acc: pa.Array | None = None
    if fast.any():
        rows = np.flatnonzero(fast)
        first_comma = np.searchsorted(comma_pos, starts[rows])
        bounds = np.empty((len(rows), fields + 1), dtype=np.int64)
        bounds[:, 0] = starts[rows] - 1
        bounds[:, fields] = ends[rows]
        if fields > 1:
            bounds[:, 1:fields] = comma_pos[first_comma[:, None] + np.arange(fields - 1)[None, :]]
        a_start = bounds[:, slow.i_account] + 1
        a_len = bounds[:, slow.i_account + 1] - a_start
        t_start = bounds[:, slow.i_ts] + 1
        t_len = bounds[:, slow.i_ts + 1] - t_start
        ok = (a_len > 0) & (a_len <= MAX_ACCOUNT_BYTES) & (t_len > 0) & (t_len <= _FAST_TS_DIGITS)
        if ok.any():
            cand = np.flatnonzero(ok)
            max_len = int(t_len[cand].max())
            pos = t_start[cand][:, None] + np.arange(max_len)[None, :]
            inside = np.arange(max_len)[None, :] < t_len[cand][:, None]
            chars = buf[np.minimum(pos, len(buf) - 1)]
            digit = (chars >= 48) & (chars <= 57)
            ok[cand] = (digit | ~inside).all(axis=1)
        fast[rows[~ok]] = False
        rows, a_start, a_len, t_start, t_len = (
            rows[ok],
            a_start[ok],
            a_len[ok],
            t_start[ok],
            t_len[ok],
        )
        events_acc = _gather(buf, a_start, a_len)
        events_ts = _parse_digits(buf, t_start, t_len)
        events_pos = chunk.base + starts[rows]
    slow_rows = np.flatnonzero(~fast)
    builder = _Builder(chunk.partition)
    data = chunk.data
    for i in slow_rows.tolist():
        s, e = int(starts[i]), int(ends[i])
        builder.line(data[s:e], chunk.base + s, slow)
    if events_acc is None:
        events = builder.batch()
    elif not builder.accounts:
        events = EventBatch(chunk.partition, events_acc, events_ts, events_pos)
    else:
        slow_batch = builder.batch()
        pos = np.concatenate([events_pos, slow_batch.positions])
        order = np.argsort(pos, kind="stable")
        accounts = pa.concat_arrays([events_acc, slow_batch.accounts]).take(pa.array(order))
        events = EventBatch(
            chunk.partition, accounts, np.concatenate([events_ts, slow_batch.ts])[order], pos[order]
        )
    return Decoded(events, builder.dead, n_lines, len(chunk.data))


def _decode_jsonl(chunk: LinesChunk) -> Decoded:
    builder = _Builder(chunk.partition)
    data = chunk.data
    buf = np.frombuffer(data, dtype=np.uint8)
    starts, ends = _line_starts(buf)
    base = chunk.base
    whole = _decode_jsonl_arrow(chunk, starts)
    if whole is not None:
        return whole
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        builder.line(data[s:e], base + s, _json_line)
    return Decoded(builder.batch(), builder.dead, len(starts), len(data))


def _decode_jsonl_arrow(chunk: LinesChunk, starts: np.ndarray) -> Decoded | None:
    """Decode a chunk whose every line is a valid JSON event with Arrow's reader, else None."""
    if not len(starts) or b"\r" in chunk.data:
        return None
    columns = _arrow_events(chunk.data, len(starts))
    if columns is None:
        return None
    accounts, ts = columns
    events = EventBatch(chunk.partition, accounts, ts, chunk.base + starts)
    return Decoded(events, [], len(starts), len(chunk.data))


def read_json_lines(data: bytes, schema: pa.Schema) -> pa.Table | None:
    """Read JSON lines with Arrow under an explicit schema; None when Arrow refuses them."""
    try:
        return pajson.read_json(
            pa.py_buffer(data),
            read_options=pajson.ReadOptions(use_threads=False, block_size=max(len(data), 1 << 20)),
            parse_options=pajson.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="ignore"
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None


def _arrow_events(data: bytes, rows: int) -> tuple[pa.Array, np.ndarray] | None:
    """Return (binary accounts, ts) of `rows` JSON lines if every one is a valid event."""
    table = read_json_lines(data, _EVENT_SCHEMA)
    columns = None if table is None else _valid_columns(table, rows)
    if columns is None:
        return None
    accounts, ts = columns
    return accounts.cast(pa.binary()), ts


def decode_chunk(chunk: LinesChunk) -> Decoded:
    """Decode a chunk of lines (JSON lines or CSV) into events and dead letters."""
    if chunk.fmt == "csv":
        return _decode_csv(chunk)
    if chunk.fmt == "jsonl":
        return _decode_jsonl(chunk)
    raise ValueError(f"unknown line format {chunk.fmt!r}; expected 'csv' or 'jsonl'")


_EVENT_SCHEMA = pa.schema([("account", pa.string()), ("ts", pa.int64())])


def one_line_values(values: list[bytes | None]) -> bytes | None:
    """Return `values` joined by newlines if each is one line starting with "{", else None.

    None for no values too. Checked on the joined bytes, without a Python step per value:
    exactly one newline between values, each followed by "{". Then a JSON reader's rows are the
    values one to one (a value holding two objects shows as a row too many).
    """
    try:
        data = b"\n".join(values)  # type: ignore[arg-type]
    except TypeError:  # a None value (a tombstone)
        return None
    if not data or data[0] != _LBRACE:
        return None
    buf = np.frombuffer(data, np.uint8)
    newlines = np.flatnonzero(buf == _NEWLINE)
    if len(newlines) != len(values) - 1:
        return None
    if len(newlines) and (newlines[-1] + 1 == len(buf) or (buf[newlines + 1] != _LBRACE).any()):
        return None
    return data


_NEWLINE, _LBRACE = ord("\n"), ord("{")


def _decode_records_arrow(records: RecordList) -> Decoded | None:
    """Decode records whose every value is a valid one-line JSON event with Arrow, else None."""
    values = records.values
    data = one_line_values(values)
    if data is None:
        return None
    columns = _arrow_events(data, len(values))
    if columns is None:
        return None
    accounts, ts = columns
    events = EventBatch(records.partition, accounts, ts, positions_array(records.positions))
    return Decoded(events, [], len(values), len(data) - len(values) + 1)


def decode_records(records: RecordList) -> Decoded:
    """Decode message-stream records (one JSON event per record value) into events.

    A batch whose every value is a valid event is decoded by Arrow's JSON reader; otherwise each
    record is decoded on its own.
    """
    return _decode_records_arrow(records) or _decode_records_one_by_one(records)


def _decode_records_one_by_one(records: RecordList) -> Decoded:
    builder = _Builder(records.partition)
    size = 0
    for value, position in zip(records.values, records.positions, strict=True):
        if value is None:
            builder.dead.append(_dead("null_value", b"", records.partition, position))
            continue
        size += len(value)
        builder.line(value, position, decode_json_value)
    return Decoded(builder.batch(), builder.dead, len(records.values), size)


def _decode_any(item: LinesChunk | RecordList | EventBatch, decode=None) -> Decoded:
    """Decode one raw batch, with `decode(item)` when given, and set how far it reached."""
    if isinstance(item, LinesChunk):
        if not item.data:
            d = Decoded(_no_events(item.partition), [], 0)
        else:
            d = decode_chunk(item) if decode is None else decode(item)
        through = item.base + len(item.data) - 1
        held_back = item.held_back
    elif isinstance(item, RecordList):
        d = decode_records(item) if decode is None else decode(item)
        through = item.positions[-1] if item.positions else -1
        held_back = 0
    elif isinstance(item, EventBatch):
        d = Decoded(item, [], len(item))
        through = int(item.positions[-1]) if len(item) else -1
        held_back = 0
    else:
        raise TypeError(f"cannot decode {type(item).__name__}; expected LinesChunk or RecordList")
    return replace(d, events=replace(d.events, through=through), held_back=held_back)


def _no_events(partition: str) -> EventBatch:
    empty = np.empty(0, np.int64)
    return EventBatch(partition, pa.array([], pa.binary()), empty, empty)


@dataclass(frozen=True)
class DecodeOutputs:
    """Streams out of `decode_events`."""

    decoded: Stream[Decoded]
    events: Stream[EventBatch]
    dead: Stream[DeadLetter] = field(repr=False)


@operator
def decode_events(
    step_id: str, up: Stream[LinesChunk | RecordList | EventBatch], decode=None
) -> DecodeOutputs:
    """Decode raw batches into event batches and dead letters; never raises on bad input.

    Every raw batch yields one event batch, possibly empty, whose `through` says how far the
    source has been read, so that the state can record it. `decode` (a function of a
    `LinesChunk` or `RecordList` to `Decoded`) replaces the signal-error decoder.
    """
    decoded = op.map("decode", up, lambda item: _decode_any(item, decode))
    events = op.filter_map(
        "events", decoded, lambda d: d.events if len(d.events) or d.events.through >= 0 else None
    )
    dead = op.flat_map("dead", decoded, lambda d: d.dead)
    return DecodeOutputs(decoded, events, dead)
