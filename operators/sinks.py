"""Sinks of the flows: JSON lines files, the history and prediction stores, run statistics."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from streamml.operators.recovery_state import check_output_length, first_start
from streamml.operators.rolling import ShardUpdate
from streamml.operators.shard import shard_key, shard_of_key
from streamml.state._parquet import DayPartitionedWriter
from streamml.state.definitions import FeatureDef
from streamml.state.history import HistoryWriter
from streamml.state.predictions import PredictionWriter, TimeoutWriter

__all__ = [
    "DayStoreSink",
    "HistorySink",
    "JsonLinesSink",
    "PredictionStoreSink",
    "StatsSink",
    "read_stats",
]


class _JsonLinesPartition(StatefulSinkPartition[Any, int]):
    def __init__(self, path: Path, resume: int | None, recovery_dir: Path | None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume is None and recovery_dir is not None:
            size = path.stat().st_size if path.exists() else 0
            resume = first_start(recovery_dir, str(path.resolve()), size)
        if resume is not None:
            check_output_length(path, resume, recovery_dir)
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
    With a `recovery_dir`, a resumed run first cuts the file back to its length at the resumed
    snapshot (or at the first start), so each item is in the file once.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, recovery_dir: str | os.PathLike[str] | None = None
    ) -> None:
        self.path = Path(path).resolve()
        self.recovery_dir = Path(recovery_dir) if recovery_dir is not None else None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.recovery_dir is None:
            self.path.touch()

    def list_parts(self) -> list[str]:
        """Return the single partition."""
        return [str(self.path)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None):
        """Open the file for appending."""
        return _JsonLinesPartition(self.path, resume_state, self.recovery_dir)


class _TimedFlushPartition(StatefulSinkPartition[Any, Any]):
    """A sink partition whose writers buffer rows, written every `flush_interval_s` at least.

    Each partition starts `phase` (0-1) of an interval early, so the shards of a worker flush
    at evenly spread moments, not all in one pause of the worker.
    """

    def __init__(self, writers: dict[str, Any], flush_interval_s: float, phase: float) -> None:
        self.writers = writers
        self.flush_interval_s = flush_interval_s
        self.flushed = time.monotonic() - phase * flush_interval_s

    def _flush(self) -> None:
        for writer in self.writers.values():
            writer.flush()
        self.flushed = time.monotonic()

    def _flush_if_due(self) -> None:
        if time.monotonic() - self.flushed >= self.flush_interval_s:
            self._flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


class _HistoryPartition(_TimedFlushPartition):
    def write_batch(self, items: list[ShardUpdate]) -> None:
        for u in items:
            for name in u.features:
                writer = self.writers.get(name)
                if writer is not None:
                    writer.append(*u.feature_rows(name))
        self._flush_if_due()

    def snapshot(self) -> dict[str, tuple[str, int]]:
        self._flush()
        return {name: (w.writer_id, w.seq) for name, w in self.writers.items()}


class _ShardStoreSink(FixedPartitionedSink[Any, Any]):
    """A sink with one partition per shard (items keyed ``shard-NNN``), each with its writers.

    Subclasses set `shards`, `recovery_dir` and `flush_interval_s`.
    """

    shards: int
    recovery_dir: Path | None
    flush_interval_s: float

    def list_parts(self) -> list[str]:
        """Return one partition per shard."""
        return [shard_key(i) for i in range(self.shards)]

    def part_fn(self, item_key: str) -> int:
        """Route a shard's items to that shard's partition."""
        return shard_of_key(item_key)

    def _new_writer_id(self, for_part: str, target: Path) -> str:
        """Return the writer id of a shard's first start writing under `target`.

        The id the recovery dir recorded at the first start, if any, so that a run resumed
        before its first snapshot removes what that start wrote.
        """
        writer_id = f"{for_part}-{time.time_ns():x}-{os.getpid()}"
        return first_start(self.recovery_dir, str(target.resolve()) + f"#{for_part}", writer_id)

    def _phase(self, for_part: str) -> float:
        """Return where in the flush interval the shard's partition starts (0-1)."""
        return self.part_fn(for_part) / max(1, self.shards)


class HistorySink(_ShardStoreSink):
    """Append every accepted event's feature values to the history store, one writer per shard.

    Each feature of `features` is written under its own name (with its version); counts as
    int64, other aggregations as float64. Items are keyed by shard (``shard-NNN``). A shard's
    buffers are written at `rows_per_flush` rows, `flush_interval_s` after its last write and
    at each snapshot, so what a worker holds is bounded by the interval, whatever the snapshot
    interval; on resume, the files written after the resumed snapshot are removed, since the
    replay writes them again.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        features: tuple[FeatureDef, ...],
        pipeline_version: str,
        *,
        shards: int,
        recovery_dir: str | os.PathLike[str] | None = None,
        rows_per_flush: int = 250_000,
        flush_interval_s: float = 5.0,
    ) -> None:
        self.root = Path(root)
        self.recovery_dir = Path(recovery_dir) if recovery_dir is not None else None
        self.features = features
        self.pipeline_version = pipeline_version
        self.shards = shards
        self.rows_per_flush = rows_per_flush
        self.flush_interval_s = flush_interval_s

    def build_part(
        self, step_id: str, for_part: str, resume_state: dict[str, tuple[str, int]] | None
    ) -> _HistoryPartition:
        """Open the shard's writers, discarding what was written after the resumed snapshot."""
        writers = {}
        for f in self.features:
            kind = pa.int64() if f.aggregation == "count" else pa.float64()
            resumed = None if resume_state is None else resume_state.get(f.name)
            if resumed is None:
                writer_id, seq = self._new_writer_id(for_part, self.root / f.name), 0
            else:
                writer_id, seq = resumed
            writer = HistoryWriter(
                self.root,
                f.name,
                self.pipeline_version,
                writer_id=writer_id,
                seq=seq,
                value_type=kind,
                feature_version=f.version,
                rows_per_flush=self.rows_per_flush,
            )
            writer.discard_from(seq)
            writers[f.name] = writer
        return _HistoryPartition(writers, self.flush_interval_s, self._phase(for_part))


class _DayStorePartition(_TimedFlushPartition):
    def write_batch(self, items: list[Any]) -> None:
        for out in items:
            for name, writer in self.writers.items():
                records = getattr(out, name)
                if records:
                    writer.extend(records)
        self._flush_if_due()

    def snapshot(self) -> tuple:
        self._flush()
        first = next(iter(self.writers.values()))
        return (first.writer_id, *(w.seq for w in self.writers.values()))


class DayStoreSink(_ShardStoreSink):
    """Write the records of keyed outputs to day-partitioned Parquet stores, a writer per shard.

    `writers` maps an attribute of the items (a list of records) to the writer class that
    stores them under `root`. Items are keyed by shard (``shard-NNN``). Buffers are written at
    `rows_per_flush` rows, `flush_interval_s` after the last write, and at each snapshot; on
    resume, the files written after the resumed snapshot are removed, since the replay writes
    them again, so each record is stored once.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        pipeline_version: str,
        writers: Mapping[str, type[DayPartitionedWriter]],
        *,
        shards: int,
        recovery_dir: str | os.PathLike[str] | None = None,
        rows_per_flush: int = 10_000,
        flush_interval_s: float = 5.0,
    ) -> None:
        self.root = Path(root)
        self.pipeline_version = pipeline_version
        self.writers = dict(writers)
        self.shards = shards
        self.recovery_dir = Path(recovery_dir) if recovery_dir is not None else None
        self.rows_per_flush = rows_per_flush
        self.flush_interval_s = flush_interval_s

    def build_part(
        self, step_id: str, for_part: str, resume_state: tuple | None
    ) -> _DayStorePartition:
        """Open the shard's writers, discarding what was written after the resumed snapshot."""
        if resume_state is None:
            writer_id = self._new_writer_id(for_part, self.root)
            seqs = [0] * len(self.writers)
        else:
            writer_id, *seqs = resume_state
        kw = {"writer_id": writer_id, "rows_per_flush": self.rows_per_flush}
        writers = {}
        for (name, cls), seq in zip(self.writers.items(), seqs, strict=True):
            writer = cls(self.root, self.pipeline_version, seq=seq, **kw)
            writer.discard_from(seq)
            writers[name] = writer
        return _DayStorePartition(writers, self.flush_interval_s, self._phase(for_part))


def PredictionStoreSink(
    root: str | os.PathLike[str],
    pipeline_version: str,
    *,
    shards: int,
    recovery_dir: str | os.PathLike[str] | None = None,
    rows_per_flush: int = 10_000,
    flush_interval_s: float = 5.0,
) -> DayStoreSink:
    """Write every prediction (answers and shadows) and timeout record to the prediction store.

    Items are `PredictOutput`s keyed by shard; see `DayStoreSink`.
    """
    return DayStoreSink(
        root,
        pipeline_version,
        {"predictions": PredictionWriter, "timeouts": TimeoutWriter},
        shards=shards,
        recovery_dir=recovery_dir,
        rows_per_flush=rows_per_flush,
        flush_interval_s=flush_interval_s,
    )


class _StatsPartition(StatefulSinkPartition[Mapping[str, int], None]):
    def __init__(self, path: Path | None, interval_s: float, started: float) -> None:
        self.path = path
        self.interval_s = interval_s
        self.counters: Counter[str] = Counter()
        self.started = started
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

    The file holds ``{"counters": {...}, "started_at", "updated_at", "finished"}``;
    ``started_at`` is when the sink was made, as the flow was built: before the first input is
    read, so a run whose input is one batch still counts the time that batch took.
    """

    def __init__(self, path: str | os.PathLike[str] | None, interval_s: float = 0.5) -> None:
        self.path = Path(path) if path is not None else None
        self.interval_s = interval_s
        self.started = time.time()
        if self.path is not None:
            # Bytewax builds the partition on the first item: a run with nothing to read
            # still reports zeros, not the counters of an earlier run.
            _StatsPartition(self.path, interval_s, self.started)

    def list_parts(self) -> list[str]:
        """Return the single partition."""
        return ["stats"]

    def build_part(self, step_id: str, for_part: str, resume_state: None):
        """Start counting."""
        return _StatsPartition(self.path, self.interval_s, self.started)


def read_stats(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Read a stats file written by `StatsSink`, or None if there is none yet."""
    try:
        return orjson.loads(Path(path).read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None
