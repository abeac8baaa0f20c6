"""Record types that travel between the steps of the feature flows.

Sources emit undecoded batches (`LinesChunk` for files, `RecordList` for message streams); the
decode step turns them into columnar `EventBatch`es plus `DeadLetter`s, or, for prediction
requests, into one `PredictionRequest` each.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

__all__ = [
    "DEAD_LETTER_RAW_LIMIT",
    "Alert",
    "DeadLetter",
    "EventBatch",
    "LinesChunk",
    "PredictionRequest",
    "RecordList",
    "positions_array",
]

DEAD_LETTER_RAW_LIMIT = 1024
"""Dead letters keep at most this many bytes of the raw record."""


@dataclass(frozen=True, slots=True)
class LinesChunk:
    """Whole lines read from a file, undecoded.

    `data` holds complete lines; `base` is the byte offset of `data[0]` in the file, so the
    position of a record is `base` plus the offset of its line inside `data`. `held_back` counts
    incomplete last lines (no newline yet) left unread at the end of the file.
    """

    partition: str
    fmt: str
    data: bytes
    base: int
    header: tuple[str, ...] | None = None
    held_back: int = 0


@dataclass(frozen=True, slots=True)
class RecordList:
    """Undecoded records of one message-stream partition, each with its position (offset).

    `positions` is a `range` when the offsets follow one another (the usual case: no Python
    integer per record), else a list.
    """

    partition: str
    values: list[bytes | None]
    positions: Sequence[int]
    topic: str = ""
    topic_partition: int = -1


def positions_array(positions: Sequence[int]) -> np.ndarray:
    """Return `positions` (a `RecordList`'s) as an int64 array."""
    if isinstance(positions, range):
        return np.arange(positions.start, positions.stop, positions.step, dtype=np.int64)
    return np.asarray(positions, dtype=np.int64)


@dataclass(frozen=True, slots=True)
class EventBatch:
    """Valid signal-error events of one source partition, in source order, as columns.

    `accounts` is a binary array of UTF-8 account ids (or a dictionary array of them), `ts`
    epoch milliseconds and `positions` the source position of each event; positions increase
    strictly. `shard` is set once the batch has been split by account shard. `through` is the
    last source position the batch covers: every record of the partition at or before it has been
    read, in this batch or an earlier one (-1 when unknown), so a shard that applies the batch
    can record the partition as applied through it even when none of the events are its own.
    `fields` holds the float64 values of the numeric fields features aggregate, one per event.
    `origin` is the id of the process that split the batch by shard (0 before the split), so the
    step that applies it can tell a batch that crossed processes.
    """

    partition: str
    accounts: pa.Array
    ts: np.ndarray
    positions: np.ndarray
    shard: int = -1
    through: int = -1
    fields: Mapping[str, np.ndarray] = field(default_factory=dict)
    origin: int = 0

    def __len__(self) -> int:
        return len(self.ts)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that could not be decoded: why, its raw bytes (cut) and where it came from."""

    reason: str
    raw: bytes
    partition: str
    position: int
    detail: str = field(default="")

    def counts(self) -> dict[str, int]:
        """Return the run counters this dead letter adds: ``dead`` and ``dead.REASON``."""
        return {"dead": 1, f"dead.{self.reason}": 1}

    def to_json(self) -> dict[str, object]:
        """Return the JSON-ready form written to dead-letter files."""
        return {
            "reason": self.reason,
            "detail": self.detail,
            "partition": self.partition,
            "position": self.position,
            "raw": self.raw.decode("utf-8", errors="backslashreplace"),
        }


@dataclass(frozen=True, slots=True)
class Alert:
    """A feature of an account crossed above its threshold: the crossing event and the value."""

    account: str
    ts: int
    value: int | float
    partition: str
    position: int
    feature: str = ""

    @property
    def alert_id(self) -> str:
        """Deterministic id: the feature, the account and the source position of the event."""
        base = f"{self.account}@{self.partition}:{self.position}"
        return f"{self.feature}/{base}" if self.feature else base

    def to_json(self) -> dict[str, object]:
        """Return the JSON-ready form written to alert outputs."""
        body: dict[str, object] = {
            "account": self.account,
            "ts": self.ts,
            "value": self.value,
            "id": self.alert_id,
        }
        if self.feature:
            body["feature"] = self.feature
        return body


@dataclass(frozen=True, slots=True)
class PredictionRequest:
    """A valid prediction request: which model, for which account, when, with what context.

    `ts` is epoch milliseconds; `context` the request's own JSON object (speed-test measures,
    ...), read by the contract's `request` sources. `partition` and `position` say where it was
    read, `raw_size` how many bytes it had there.
    """

    request_id: str
    model: str
    account: str
    ts: int
    context: dict[str, Any]
    partition: str
    position: int
    raw_size: int = 0

    def to_json(self) -> dict[str, Any]:
        """Return the request as it travels (without where it was read)."""
        return {
            "request_id": self.request_id,
            "model": self.model,
            "account": self.account,
            "ts": self.ts,
            "context": self.context,
        }
