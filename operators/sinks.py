"""Sinks of the feature flows: JSON lines files, the history store and run statistics."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
from bytewax.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)

from operators.rolling import ShardUpdate
from state.history import HistoryWriter

__all__ = ["HistorySink", "JsonLinesSink", "StatsSink", "read_stats"]


class _JsonLinesPartition(StatefulSinkPartition[Any, int]):
    def __init__(self, path: Path, resume: int | None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(path, "ab")  # noqa: SIM115
        if resume is not None:
            self.f.truncate(resume)
            self.f.seek(resume)

    def write_batch(self, items: list[Any]) -> None:
        self.f.write(
            b"".join(
                orjson.dumps(i.to_json() if hasattr(i, "to_json") else i) + b"\n" for i in items
            )
        )
        self.f.flush()

    def snapshot(self) -> int:
        return self.f.tell()

    def close(self) -> None:
        self.f.close()


class JsonLinesSink(FixedPartitionedSink[Any, int]):
    """Append items (objects with `to_json()` or JSON-ready values) to one JSON lines file.

    All items go to one partition, so one worker writes the file whatever the number of workers.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()

    def list_parts(self) -> list[str]:
        """Return the single partition."""
        return [str(self.path)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None):
        """Open the file for appending."""
        return _JsonLinesPartition(self.path, resume_state)


class _HistoryPartition(StatelessSinkPartition[ShardUpdate]):
    def __init__(self, writer: HistoryWriter) -> None:
        self.writer = writer

    def write_batch(self, items: list[ShardUpdate]) -> None:
        for u in items:
            self.writer.append(u.accounts, u.ts, u.values)

    def close(self) -> None:
        self.writer.close()


class HistorySink(DynamicSink[ShardUpdate]):
    """Append every accepted event's feature value to the history store; one writer per worker."""

    def __init__(self, root: str | os.PathLike[str], feature: str, pipeline_version: str) -> None:
        self.root = Path(root)
        self.feature = feature
        self.pipeline_version = pipeline_version

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _HistoryPartition:
        """Open this worker's writer."""
        writer_id = f"w{worker_index}-{os.getpid()}-{time.time_ns():x}"
        return _HistoryPartition(
            HistoryWriter(self.root, self.feature, self.pipeline_version, writer_id=writer_id)
        )


class _StatsPartition(StatefulSinkPartition[Mapping[str, int], None]):
    def __init__(self, path: Path | None, interval_s: float) -> None:
        self.path = path
        self.interval_s = interval_s
        self.counters: Counter[str] = Counter()
        self.started = time.time()
        self.last_write = 0.0
        self._write(False)

    def _write(self, finished: bool) -> None:
        if self.path is None:
            return
        now = time.time()
        body = {
            "counters": dict(self.counters),
            "started_at": self.started,
            "updated_at": now,
            "finished": finished,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(orjson.dumps(body))
        os.replace(tmp, self.path)
        self.last_write = now

    def write_batch(self, items: list[Mapping[str, int]]) -> None:
        for item in items:
            self.counters.update(item)
        if time.time() - self.last_write >= self.interval_s:
            self._write(False)

    def snapshot(self) -> None:
        return None

    def close(self) -> None:
        self._write(True)


class StatsSink(FixedPartitionedSink[Mapping[str, int], None]):
    """Sum counters from every worker into one JSON file, rewritten at most every `interval_s`.

    The file holds ``{"counters": {...}, "started_at", "updated_at", "finished"}``.
    """

    def __init__(self, path: str | os.PathLike[str] | None, interval_s: float = 0.5) -> None:
        self.path = Path(path) if path is not None else None
        self.interval_s = interval_s

    def list_parts(self) -> list[str]:
        """Return the single partition."""
        return ["stats"]

    def build_part(self, step_id: str, for_part: str, resume_state: None):
        """Start counting."""
        return _StatsPartition(self.path, self.interval_s)


def read_stats(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Read a stats file written by `StatsSink`, or None if there is none yet."""
    try:
        return orjson.loads(Path(path).read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
