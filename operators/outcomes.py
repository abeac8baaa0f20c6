"""Outcomes in, and their join to the predictions they resolve.

An outcome says what a request's trouble really was: ``{"request_id": ..., "outcome": "wifi",
"observed_at": MS}``, or ``{"account": ..., "ts": MS, ...}`` (the request's account and time) in
place of the request id. `parse_outcome` turns one raw record into an `Outcome` or a dead letter
with its reason; `decode_outcome_batch` a chunk of lines or a list of messages.

The join (`outcome_join`) is keyed by the join key: the request id, or ``account@ts`` when
joining by account and request time (`JoinConfig.join_by`). Each shard keeps what waits for its
other half in a `JoinStore` (RocksDB). Its semantics, which do not depend on how the two
streams interleave as long as each arrives in event-time order up to `lateness_ms`:

- a scored variant (a prediction store row) matches the outcome of its key when
  ``request_ts <= observed_at <= request_ts + outcome_ttl_ms``; every variant of the request
  (answer, shadows) is matched, once;
- the join's clock, per shard, is ``min(newest request_ts, newest observed_at) - lateness_ms``;
  a prediction still unmatched when the clock passes ``request_ts + outcome_ttl_ms`` is
  reported *unresolved*; an outcome that matched nothing once the clock passes its
  `observed_at` (every prediction it could match has arrived by then) is reported as an
  *orphan*; a second outcome for a key is a dead letter (``duplicate_outcome``); an item that
  arrives after the clock has passed its own expiry is counted as late;
- at the end of a bounded input, what still waits stays in the store for the next run, or is
  reported (`drain`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from bytewax import operators as op
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.operators import StatefulBatchLogic
from streamml.operators.decode import InvalidRecord, json_object
from streamml.operators.records import DEAD_LETTER_RAW_LIMIT, DeadLetter, LinesChunk, RecordList
from streamml.state._parquet import part_name
from streamml.state.outcomes import JoinStore, OutcomeRecord, expiry_key
from streamml.state.predictions import PREDICTIONS_DIR

__all__ = [
    "JOIN_BY",
    "JoinConfig",
    "JoinOutput",
    "JoinShard",
    "Outcome",
    "PredictionStoreSource",
    "ScoredVariant",
    "decode_outcome_batch",
    "outcome_join",
    "parse_outcome",
]

JOIN_BY = ("request", "account-ts")
"""What an outcome is joined on: the request id, or the request's account and time."""
_MAX_ID_BYTES = 256
_MAX_TS = 253_402_300_799_999


@dataclass(frozen=True, slots=True)
class Outcome:
    """A valid outcome: what was observed for a request, and when (epoch ms)."""

    key: str
    outcome: str
    observed_at: int
    request_id: str | None
    account: str | None
    ts: int | None
    partition: str
    position: int

    def report(self, reason: str) -> dict[str, Any]:
        """Return the JSON-ready report of this outcome matching no prediction."""
        return {
            "kind": "orphan",
            "reason": reason,
            "request_id": self.request_id,
            "account": self.account,
            "ts": self.ts,
            "outcome": self.outcome,
            "observed_at": self.observed_at,
        }


@dataclass(frozen=True, slots=True)
class ScoredVariant:
    """One prediction store row, as the join needs it."""

    request_id: str
    model: str
    version: str
    variant: str
    role: str
    account: str
    request_ts: int
    label: str
    probabilities: tuple[float, ...]
    classes: tuple[str, ...]
    metadata_revision: int

    def key(self, join_by: str) -> str:
        """Return the join key of this row."""
        return self.request_id if join_by == "request" else f"{self.account}@{self.request_ts}"

    def matched(self, o: Outcome) -> OutcomeRecord:
        """Return this variant joined to `o`."""
        return OutcomeRecord(
            self.request_id,
            self.model,
            self.version,
            self.variant,
            self.role,
            self.account,
            self.request_ts,
            self.label,
            self.probabilities,
            self.classes,
            self.metadata_revision,
            o.outcome,
            o.observed_at,
        )

    def report(self, reason: str) -> dict[str, Any]:
        """Return the JSON-ready report of this variant never resolved."""
        return {
            "kind": "unresolved",
            "reason": reason,
            "request_id": self.request_id,
            "model": self.model,
            "version": self.version,
            "variant": self.variant,
            "role": self.role,
            "account": self.account,
            "request_ts": self.request_ts,
        }


def _text(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if value is None:
        raise InvalidRecord(f"missing_{name}")
    if not isinstance(value, str) or not value:
        raise InvalidRecord(f"bad_{name}", f"{name} must be a non-empty string")
    if len(value.encode("utf-8", errors="surrogatepass")) > _MAX_ID_BYTES:
        raise InvalidRecord(f"{name}_too_long", f"more than {_MAX_ID_BYTES} bytes")
    return value


def _millis(obj: dict[str, Any], name: str) -> int:
    value = obj.get(name)
    if value is None:
        raise InvalidRecord(f"missing_{name}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRecord(f"bad_{name}", f"{name} must be epoch milliseconds")
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise InvalidRecord(f"bad_{name}", f"{name} must be whole epoch milliseconds")
        value = int(value)
    if not 0 <= value <= _MAX_TS:
        raise InvalidRecord(f"bad_{name}", f"{name} {value} is out of range")
    return value


def parse_outcome(
    raw: bytes, partition: str, position: int, classes: Sequence[str], join_by: str = "request"
) -> Outcome | DeadLetter:
    """Parse one raw outcome read at `position` of `partition`; never raises on bad input."""
    try:
        obj = json_object(raw)
        outcome = _text(obj, "outcome")
        if outcome not in classes:
            raise InvalidRecord("unknown_outcome", f"{outcome!r} is not one of {list(classes)}")
        observed_at = _millis(obj, "observed_at")
        request_id = _text(obj, "request_id") if "request_id" in obj else None
        account = _text(obj, "account") if "account" in obj else None
        ts = _millis(obj, "ts") if "ts" in obj else None
        if join_by == "request":
            if request_id is None:
                raise InvalidRecord("missing_request_id", "outcomes are joined by request id")
            key = request_id
        else:
            if account is None or ts is None:
                raise InvalidRecord(
                    "missing_account_ts", "outcomes are joined by account and request time"
                )
            key = f"{account}@{ts}"
        return Outcome(key, outcome, observed_at, request_id, account, ts, partition, position)
    except InvalidRecord as exc:
        return DeadLetter(exc.reason, raw[:DEAD_LETTER_RAW_LIMIT], partition, position, exc.detail)


def decode_outcome_batch(
    item: LinesChunk | RecordList, classes: Sequence[str], join_by: str = "request"
) -> list[Outcome | DeadLetter]:
    """Decode a chunk of JSON lines or a list of message values into outcomes and dead letters."""
    if isinstance(item, RecordList):
        return [
            DeadLetter("null_value", b"", item.partition, pos)
            if value is None
            else parse_outcome(value, item.partition, pos, classes, join_by)
            for value, pos in zip(item.values, item.positions, strict=True)
        ]
    if isinstance(item, LinesChunk):
        if item.fmt != "jsonl":
            raise ValueError(
                f"outcomes are JSON lines, got a {item.fmt!r} chunk from {item.partition}; "
                "give outcome files a .jsonl name"
            )
        out: list[Outcome | DeadLetter] = []
        offset, data = 0, item.data
        while offset < len(data):
            end = data.find(b"\n", offset)
            end = len(data) if end < 0 else end
            out.append(
                parse_outcome(
                    data[offset:end], item.partition, item.base + offset, classes, join_by
                )
            )
            offset = end + 1
        return out
    raise TypeError(f"cannot decode {type(item).__name__} as outcomes")


_VARIANT_COLUMNS = [
    "request_id",
    "model",
    "version",
    "variant",
    "role",
    "account",
    "request_ts",
    "label",
    "probabilities",
    "classes",
    "metadata_revision",
]


def _variants(table: pa.Table) -> list[ScoredVariant]:
    cols = [table.column(c).to_pylist() for c in _VARIANT_COLUMNS]
    return [
        ScoredVariant(r, m, v, var, role, a, t, lab, tuple(p), tuple(c), rev)
        for r, m, v, var, role, a, t, lab, p, c, rev in zip(*cols, strict=True)
    ]


def read_group(paths: Sequence[Path]) -> pa.Table:
    """Read prediction store files as one table in request-time order (then request, variant)."""
    tables = [pq.read_table(p, columns=_VARIANT_COLUMNS) for p in paths]
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    table = table.set_column(
        _VARIANT_COLUMNS.index("request_ts"),
        "request_ts",
        table.column("request_ts").cast(pa.int64()),
    )
    order = pc.sort_indices(
        table,
        sort_keys=[
            ("request_ts", "ascending"),
            ("request_id", "ascending"),
            ("variant", "ascending"),
        ],
    )
    return table.take(order)


_GROUP_ROWS = 4096


class _StorePartition(StatefulSourcePartition[list[ScoredVariant], dict[str, Any]]):
    """Reads the files found at each look, a UTC day at a time, merged in request-time order.

    The resume state holds, per writer, the last file wholly emitted, and the day group being
    emitted (its files and how many of its rows were emitted), so a restart emits each row once.
    """

    def __init__(
        self, root: Path, resume: dict[str, Any] | None, follow: bool, poll_s: float
    ) -> None:
        self.root = root
        resume = resume or {}
        self.read: dict[str, int] = dict(resume.get("read", {}))
        self.group: list[tuple[str, int, str]] = [tuple(g) for g in resume.get("group", [])]
        self.offset: int = resume.get("offset", 0)
        self.follow = follow
        self.poll_s = poll_s
        self._table: pa.Table | None = None
        self._pending: list[list[tuple[str, int, str]]] = []
        self._idle = False

    def _scan(self) -> None:
        found: dict[str, dict[int, Path]] = {}
        for path in (self.root / PREDICTIONS_DIR).glob("date=*/part-*.parquet"):
            name = part_name(path)
            if name is not None:
                found.setdefault(name[0], {})[name[1]] = path
        by_day: dict[str, list[tuple[str, int, str]]] = {}
        for writer, parts in found.items():
            seq = self.read.get(writer, -1) + 1
            # A writer numbers its files 0, 1, 2, ...: read them in order and wait at a gap.
            while seq in parts:
                path = parts[seq]
                by_day.setdefault(path.parent.name, []).append((writer, seq, str(path)))
                seq += 1
        self._pending = [by_day[day] for day in sorted(by_day)]

    def next_batch(self) -> list[list[ScoredVariant]]:
        if not self.group:
            if not self._pending:
                self._scan()
            if not self._pending:
                if not self.follow:
                    raise StopIteration
                self._idle = True
                return []
            self.group, self.offset = self._pending.pop(0), 0
        self._idle = False
        if self._table is None:
            self._table = read_group([Path(p) for _, _, p in self.group])
        rows = self._table.slice(self.offset, _GROUP_ROWS)
        self.offset += rows.num_rows
        if self.offset >= self._table.num_rows:
            for writer, seq, _ in self.group:
                self.read[writer] = max(self.read.get(writer, -1), seq)
            self.group, self.offset, self._table = [], 0, None
        return [_variants(rows)] if rows.num_rows else []

    def next_awake(self) -> datetime | None:
        if self._idle:
            return datetime.now(UTC) + timedelta(seconds=self.poll_s)
        return None

    def snapshot(self) -> dict[str, Any]:
        return {
            "read": dict(self.read),
            "group": [list(g) for g in self.group],
            "offset": self.offset,
        }


class PredictionStoreSource(FixedPartitionedSource[list[ScoredVariant], dict[str, Any]]):
    """Read a prediction store's rows as lists of `ScoredVariant`s, in request-time order.

    One partition. Each look finds the files not read yet (each writer's in sequence, stopping
    at a gap) and emits them a UTC day at a time, the day's rows merged in request-time order.
    With `follow`, the source looks again every `poll_s` seconds; without it, it ends once
    every file is read.
    """

    def __init__(self, root: str | Path, *, follow: bool = False, poll_s: float = 1.0) -> None:
        self.root = Path(root)
        self.follow = follow
        self.poll_s = poll_s

    def list_parts(self) -> list[str]:
        """Return the one partition."""
        return ["prediction-store"]

    def build_part(
        self, step_id: str, for_part: str, resume_state: dict[str, Any] | None
    ) -> _StorePartition:
        """Build the partition, after the rows `resume_state` says were emitted."""
        return _StorePartition(self.root, resume_state, self.follow, self.poll_s)


@dataclass(frozen=True, slots=True)
class JoinConfig:
    """The outcome join's settings: see the module docstring."""

    state_dir: Path
    outcome_ttl_ms: int = 30 * 86_400_000
    lateness_ms: int = 3_600_000
    join_by: str = "request"
    recovery: bool = False
    drain: bool = False

    def __post_init__(self) -> None:
        if self.join_by not in JOIN_BY:
            raise ValueError(f"join_by must be one of {JOIN_BY}, got {self.join_by!r}")
        if self.outcome_ttl_ms < 0 or self.lateness_ms < 0:
            raise ValueError("outcome_ttl_ms and lateness_ms must be >= 0")


@dataclass(slots=True)
class JoinOutput:
    """What one shard emitted for one batch: matched rows, reports, dead letters, counts."""

    matched: list[OutcomeRecord] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


_NO_CLOCK = -(1 << 62)


def _variant_row(v: ScoredVariant) -> list[Any]:
    return [
        v.request_id,
        v.model,
        v.version,
        v.variant,
        v.role,
        v.account,
        v.request_ts,
        v.label,
        list(v.probabilities),
        list(v.classes),
        v.metadata_revision,
    ]


def _variant(row: list[Any]) -> ScoredVariant:
    r, m, v, var, role, a, t, lab, p, c, rev = row
    return ScoredVariant(r, m, v, var, role, a, t, lab, tuple(p), tuple(c), rev)


def _outcome_row(o: Outcome) -> list[Any]:
    return [o.key, o.outcome, o.observed_at, o.request_id, o.account, o.ts, o.partition, o.position]


class _Entry:
    """What waits under one join key: unmatched variants, the outcome, the variants matched."""

    __slots__ = ("expires", "matched", "outcome", "pending")

    def __init__(self, raw: bytes | None) -> None:
        if raw is None:
            self.pending: list[ScoredVariant] = []
            self.outcome: Outcome | None = None
            self.matched: list[str] = []
            self.expires: int | None = None
            return
        d = orjson.loads(raw)
        self.pending = [_variant(r) for r in d["p"]]
        self.outcome = Outcome(*d["o"]) if d["o"] else None
        self.matched = d["m"]
        self.expires = d["x"]

    def dumps(self) -> bytes:
        return orjson.dumps(
            {
                "p": [_variant_row(v) for v in self.pending],
                "o": _outcome_row(self.outcome) if self.outcome else None,
                "m": self.matched,
                "x": self.expires,
            }
        )

    def expiry(self, ttl: int) -> int | None:
        times = [v.request_ts + ttl for v in self.pending]
        if self.outcome is not None:
            times.append(self.outcome.observed_at)
        return max(times) if times else None


class JoinShard(StatefulBatchLogic[Any, JoinOutput, tuple[str, int]]):
    """One shard's join; values are ``(shard, item)``, so a new logic learns its shard.

    Items are `Outcome`s and lists of `ScoredVariant`s. The resume state is the shard and the
    number of epochs its store has closed; with `JoinConfig.recovery` the store is rolled back
    to that epoch when opened.
    """

    def __init__(self, config: JoinConfig, resume: tuple[str, int] | None) -> None:
        self.config = config
        self.store: JoinStore | None = None
        self.resume = resume
        if resume is not None:
            self._open(resume[0])

    def _open(self, shard: str) -> JoinStore:
        self.shard = shard
        store = self.store = JoinStore(self.config.state_dir / shard, undo=self.config.recovery)
        if self.config.recovery:
            store.rollback_to(self.resume[1] if self.resume else 0)
        self.newest = {
            side: int.from_bytes(raw, "big", signed=True) if raw else _NO_CLOCK
            for side in ("predictions", "outcomes")
            for raw in [store.get_meta(side)]
        }
        return store

    def _clock(self) -> int:
        low = min(self.newest.values())
        return _NO_CLOCK if low == _NO_CLOCK else low - self.config.lateness_ms

    def on_batch(self, values: list[Any]) -> tuple[list[JoinOutput], bool]:
        """Apply a batch of items, write the changes in one WriteBatch, then expire."""
        out = JoinOutput()
        counts: dict[str, int] = {}
        if self.store is None:
            self._open(values[0][0])
        items: list[ScoredVariant | Outcome] = []
        for _shard, value in values:
            if isinstance(value, list):
                items.extend(value)
            else:
                items.append(value)
        join_by = self.config.join_by
        keys = list(
            dict.fromkeys(i.key(join_by) if isinstance(i, ScoredVariant) else i.key for i in items)
        )
        entries = {
            k: _Entry(raw)
            for k, raw in zip(keys, self.store.get_entries([k.encode() for k in keys]), strict=True)
        }
        before = {k: e.expires for k, e in entries.items()}
        clock = self._clock()
        for item in items:
            if isinstance(item, ScoredVariant):
                self._add_variant(entries[item.key(join_by)], item, out, counts, clock)
            else:
                self._add_outcome(entries[item.key], item, out, counts, clock)
        self._write(entries, before)
        self._expire(out, counts)
        out.counts = counts
        return ([out] if out.matched or out.reports or out.dead or counts else []), False

    def _bump(self, counts: dict[str, int], name: str, n: int = 1) -> None:
        counts[name] = counts.get(name, 0) + n

    def _add_variant(self, e: _Entry, v: ScoredVariant, out: JoinOutput, counts, clock) -> None:
        self._bump(counts, "predictions")
        self.newest["predictions"] = max(self.newest["predictions"], v.request_ts)
        if v.request_ts + self.config.outcome_ttl_ms < clock:
            self._bump(counts, "late.predictions")
        if v.variant in e.matched or any(p.variant == v.variant for p in e.pending):
            self._bump(counts, "duplicate_predictions")
            return
        e.pending.append(v)
        self._match(e, out, counts)

    def _add_outcome(self, e: _Entry, o: Outcome, out: JoinOutput, counts, clock) -> None:
        self._bump(counts, "outcomes")
        self.newest["outcomes"] = max(self.newest["outcomes"], o.observed_at)
        if o.observed_at < clock:
            self._bump(counts, "late.outcomes")
        if e.outcome is not None:
            raw = orjson.dumps(
                {k: v for k, v in o.report("").items() if k not in ("kind", "reason")}
            )
            out.dead.append(
                DeadLetter(
                    "duplicate_outcome",
                    raw,
                    o.partition,
                    o.position,
                    f"{o.key} had an outcome from {e.outcome.partition}:{e.outcome.position}",
                )
            )
            return
        e.outcome = o
        self._match(e, out, counts)

    def _match(self, e: _Entry, out: JoinOutput, counts) -> None:
        o = e.outcome
        if o is None or not e.pending:
            return
        ttl = self.config.outcome_ttl_ms
        keep = []
        for v in e.pending:
            if v.request_ts <= o.observed_at <= v.request_ts + ttl:
                out.matched.append(v.matched(o))
                e.matched.append(v.variant)
            else:
                keep.append(v)
        self._bump(counts, "matched", len(e.pending) - len(keep))
        e.pending = keep

    def _write(self, entries: dict[str, _Entry], before: dict[str, int | None]) -> None:
        ttl = self.config.outcome_ttl_ms
        puts: dict[bytes, bytes | None] = {}
        index: dict[bytes, bytes | None] = {}
        for k, e in entries.items():
            key = k.encode()
            e.expires = e.expiry(ttl)
            old = before[k]
            if old is not None and old != e.expires:
                index[expiry_key(old, key)] = None
            if e.expires is None:
                puts[key] = None
            else:
                puts[key] = e.dumps()
                index[expiry_key(e.expires, key)] = b""
        meta = {side: t.to_bytes(8, "big", signed=True) for side, t in self.newest.items()}
        self.store.write(puts, index, meta)

    def _expire(self, out: JoinOutput, counts, clock: int | None = None) -> None:
        clock = self._clock() if clock is None else clock
        if clock == _NO_CLOCK:
            return
        while True:
            due = self.store.due(clock)
            if not due:
                return
            keys = [k for _, k in due]
            raws = self.store.get_entries(keys)
            puts: dict[bytes, bytes | None] = {}
            index: dict[bytes, bytes | None] = {}
            for (ikey, key), raw in zip(due, raws, strict=True):
                index[ikey] = None
                if raw is None:
                    continue
                e = _Entry(raw)
                reason = "no_outcome" if e.outcome is None else "outcome_outside_ttl"
                for v in e.pending:
                    out.reports.append(v.report(reason))
                self._bump(counts, "unresolved", len(e.pending))
                if e.outcome is not None and not e.matched:
                    reason = "no_prediction" if not e.pending else "outside_ttl"
                    out.reports.append(e.outcome.report(reason))
                    self._bump(counts, "orphans")
                puts[key] = None
            self.store.write(puts, index)

    def on_eof(self) -> tuple[list[JoinOutput], bool]:
        """With `drain`, report whatever still waits."""
        if not self.config.drain or self.store is None:
            return [], False
        out = JoinOutput()
        counts: dict[str, int] = {}
        self._expire(out, counts, clock=1 << 62)
        out.counts = counts
        return ([out] if out.reports or counts else []), False

    def snapshot(self) -> tuple[str, int]:
        """Close the store's epoch; the resume state is the shard and the epochs closed."""
        if self.store is None:
            return self.resume  # type: ignore[return-value]
        return self.shard, self.store.end_epoch()

    def close(self) -> None:
        """Close the store."""
        if self.store is not None:
            self.store.close()


def outcome_join(
    step_id: str, up: op.KeyedStream[tuple[str, Any]], config: JoinConfig
) -> op.KeyedStream[JoinOutput]:
    """Join outcomes to scored variants; values are ``(shard, item)`` keyed by that shard.

    Items are `Outcome`s and lists of `ScoredVariant`s of one shard; see the module docstring.
    """
    config.state_dir.mkdir(parents=True, exist_ok=True)
    return op.stateful_batch(step_id, up, lambda resume: JoinShard(config, resume))
