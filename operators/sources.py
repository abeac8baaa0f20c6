"""Bounded sources of signal-error events: files (JSON lines or CSV) and a seeded generator.

Every source is a Bytewax `FixedPartitionedSource` whose partitions emit undecoded batches with a
position per record, and whose resume state is the position to read next, so Bytewax recovery
and the position check of the rolling count work the same way for every source.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from streamml.operators.records import EventBatch, LinesChunk
from streamml.operators.recovery_state import StoredStart
from streamml.state.errors import RefusedError
from streamml.state.sources import SourceRegistry

__all__ = [
    "DEFAULT_SETTLE_MS",
    "SPEED_TEST_FIELDS",
    "FileListSource",
    "FileSource",
    "GeneratedEvents",
    "GeneratorConfig",
    "GeneratorSource",
    "detect_format",
    "generate_events",
    "generate_speed_tests",
    "partition_sizes",
    "read_csv_header",
]

DEFAULT_CHUNK_BYTES = 16 << 20
DEFAULT_SETTLE_MS = 10_000
"""A last line without a newline is read once its file has not changed for this long."""


def detect_format(path: str | os.PathLike[str]) -> str:
    """Return 'csv' for `.csv` files and 'jsonl' otherwise."""
    return "csv" if str(path).lower().endswith(".csv") else "jsonl"


def read_csv_header(path: str | os.PathLike[str]) -> tuple[tuple[str, ...], int]:
    """Return the column names of a CSV file and the byte offset of its first record."""
    with open(path, "rb") as f:
        first = f.readline(64 << 10)
    if not first.endswith(b"\n") and len(first) == 64 << 10:
        return (), 0
    text = first.decode("utf-8", errors="replace").strip().lstrip("\ufeff")
    return tuple(c.strip() for c in text.split(",")), len(first)


def _ends_with_newline(path: Path, size: int) -> bool:
    if size == 0:
        return True
    with open(path, "rb") as f:
        f.seek(size - 1)
        return f.read(1) == b"\n"


class _FilePartition(StatefulSourcePartition[LinesChunk, int]):
    def __init__(
        self,
        name: str,
        path: Path,
        fmt: str,
        header: tuple[str, ...] | None,
        start: int,
        chunk_bytes: int,
        settle_ms: int,
        registry: SourceRegistry | None,
    ) -> None:
        self.name = name
        self.path = path
        self.fmt = fmt
        self.header = header
        self.chunk_bytes = chunk_bytes
        self.settle_ms = settle_ms
        self.registry = registry
        self.f = open(path, "rb")  # noqa: SIM115
        self.pos = start
        self.f.seek(self.pos)
        self.ended = False

    def _settled(self) -> bool:
        """Whether the file has not changed for `settle_ms`: its last line is then complete."""
        age_ms = (time.time() - os.fstat(self.f.fileno()).st_mtime) * 1000
        return age_ms >= self.settle_ms

    def next_batch(self) -> list[LinesChunk]:
        if self.ended:
            raise StopIteration
        data = self.f.read(self.chunk_bytes)
        if not data:
            self._end()
            raise StopIteration
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            data += self.f.readline()
            cut = len(data) if data.endswith(b"\n") else 0
        if cut < len(data):
            rest = data[cut:]
            if cut == 0 and self._settled():
                # The file ends with a line that has no newline and has not changed for a
                # while: the line is complete; its position is where the newline would be.
                base = self.pos
                self.pos += len(rest)
                return [LinesChunk(self.name, self.fmt, rest + b"\n", base, self.header)]
            data = data[:cut]
            self.f.seek(self.pos + cut)
            if not data:
                self._end()
                return [LinesChunk(self.name, self.fmt, b"", self.pos, self.header, held_back=1)]
        base = self.pos
        self.pos += len(data)
        return [LinesChunk(self.name, self.fmt, data, base, self.header)]

    def _end(self) -> None:
        self.ended = True
        self._record()

    def _record(self) -> None:
        if self.registry is not None:
            self.registry.record_read(self.name, self.path, self.pos)

    def snapshot(self) -> int:
        self._record()
        return self.pos

    def close(self) -> None:
        self.f.close()


class FileSource(FixedPartitionedSource[LinesChunk, int]):
    """Read JSON lines or CSV files to their end, in chunks of whole lines.

    Each file is one partition, ``file:PATH``, read in order; a record's position is the byte
    offset of its line. Counts are exact for the order of each file: keep each account in one
    file (as a topic keeps each key in one partition) when reading several.

    Only complete lines are records: a last line without its newline (a writer mid-append) is
    held back, and read once it is complete; a file that simply lacks a final newline has that
    line read once the file has not changed for `settle_ms` (0: the files are complete now).

    With a `state_dir`, the state dir says what each file is and how far it was applied (see
    `streamml.state.sources`): a file that grew is read for its new lines only, a replaced or
    rotated file is read from its start as the new input it is (its partition is then named
    ``file:PATH#N``), and a truncated one is refused. With a `recovery_dir` too, a start with no
    Bytewax snapshot reads from where the first start with that recovery dir did.
    """

    def __init__(
        self,
        paths: list[str | os.PathLike[str]],
        *,
        fmt: str | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        state_dir: str | os.PathLike[str] | None = None,
        shards: int = 0,
        recovery_dir: str | os.PathLike[str] | None = None,
        settle_ms: int = DEFAULT_SETTLE_MS,
    ) -> None:
        if not paths:
            raise ValueError("FileSource needs at least one path")
        self.paths = [Path(p).resolve() for p in paths]
        for p in self.paths:
            if not p.is_file():
                raise FileNotFoundError(f"input file not found: {p}")
        if len(set(self.paths)) != len(self.paths):
            raise ValueError("the same input file was given twice")
        if settle_ms < 0:
            raise ValueError(f"settle_ms must be >= 0, got {settle_ms}")
        self.fmt = fmt
        self.chunk_bytes = chunk_bytes
        self.settle_ms = settle_ms
        self.stored = StoredStart(
            Path(state_dir) if state_dir is not None else None,
            shards,
            Path(recovery_dir) if recovery_dir is not None else None,
        )
        self.registry = SourceRegistry(state_dir) if state_dir is not None else None
        if self.registry is None:
            self.names = {f"file:{p}": p for p in self.paths}
        else:
            self.names = {self.registry.resolve_file(p): p for p in self.paths}

    def list_parts(self) -> list[str]:
        """Return one partition name per file."""
        return list(self.names)

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _FilePartition:
        """Open one file at `resume_state`, or after what the state dir has applied."""
        path = self.names[for_part]
        fmt = self.fmt or detect_format(path)
        header, first = read_csv_header(path) if fmt == "csv" else (None, 0)
        if resume_state is None:
            start = max(first, self.stored.through(for_part) + 1)
        else:
            start = int(resume_state)
        size = path.stat().st_size
        if start == size + 1 and not _ends_with_newline(path, size):
            start = size  # its last line was read without a newline (a settled file)
        if start > size:
            raise RefusedError(
                f"input {path} is {size} bytes but reading is to resume at byte {start}: the "
                "file is shorter than what was read. Restore it, or read it as a new input with "
                f"--reset-source {path}"
            )
        return _FilePartition(
            for_part,
            path,
            fmt,
            header,
            start,
            self.chunk_bytes,
            self.settle_ms,
            self.registry,
        )


class _FileListPartition(StatefulSourcePartition[LinesChunk, dict[str, int]]):
    def __init__(
        self, paths: list[Path], fmt: str, resume: dict[str, int] | None, chunk_bytes: int
    ) -> None:
        self.read = dict(resume or {})
        self.todo = list(paths)
        self.fmt = fmt
        self.chunk_bytes = chunk_bytes
        self.current: _FilePartition | None = None

    def next_batch(self) -> list[LinesChunk]:
        while True:
            if self.current is None:
                if not self.todo:
                    raise StopIteration
                path = self.todo.pop(0)
                start = self.read.get(str(path), 0)
                size = path.stat().st_size
                if start > size:
                    raise ValueError(
                        f"{path} is {size} bytes, but {start} bytes of it were read by an "
                        "earlier run: the file was replaced or truncated; give new input a "
                        "new file name"
                    )
                self.current = _FilePartition(
                    f"file:{path}", path, self.fmt, None, start, self.chunk_bytes, 0, None
                )
            try:
                batch = self.current.next_batch()
            except StopIteration:
                self.read[str(self.current.path)] = self.current.pos
                self.current.close()
                self.current = None
                continue
            self.read[str(self.current.path)] = self.current.pos
            return batch

    def snapshot(self) -> dict[str, int]:
        return dict(self.read)

    def close(self) -> None:
        if self.current is not None:
            self.current.close()


class FileListSource(FixedPartitionedSource[LinesChunk, dict[str, int]]):
    """Read the given files in order as one partition that remembers how far each was read.

    The resume state is, per file, the bytes read: a later run given other files reads those,
    and files it read before only from where it stopped. Chunks name their file (``file:PATH``)
    and positions as `FileSource` does.
    """

    def __init__(
        self,
        paths: list[str | os.PathLike[str]],
        *,
        fmt: str = "jsonl",
        name: str = "files",
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        self.paths = [Path(p).resolve() for p in paths]
        self.fmt = fmt
        self.name = name
        self.chunk_bytes = chunk_bytes

    def list_parts(self) -> list[str]:
        """Return the one partition."""
        return [self.name]

    def build_part(
        self, step_id: str, for_part: str, resume_state: dict[str, int] | None
    ) -> _FileListPartition:
        """Build the partition, resuming each file where `resume_state` says it was read."""
        return _FileListPartition(self.paths, self.fmt, resume_state, self.chunk_bytes)


@dataclass(frozen=True, slots=True)
class GeneratorConfig:
    """Shape of the generated stream.

    Accounts are drawn from a heavy-tailed (Zipf-like) popularity; a few accounts get bursts of
    errors that cross the alert threshold within an hour; a fraction of events arrive out of order
    (up to `disorder_ms` early or late) and a smaller fraction is more than a day late.
    """

    events: int = 1_000_000
    accounts: int = 100_000
    seed: int = 7
    partitions: int = 4
    start_ms: int = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)
    span_ms: int = 3 * 86_400_000
    zipf: float = 1.1
    burst_accounts: int = 20
    burst_size: int = 2600
    disorder_rate: float = 0.05
    disorder_ms: int = 1_800_000
    late_rate: float = 0.001
    batch_size: int = 50_000


@dataclass(frozen=True, slots=True)
class GeneratedEvents:
    """Columns of generated events."""

    accounts: pa.Array
    ts: np.ndarray


def _account_names(ids: np.ndarray) -> pa.Array:
    width = 8
    digits = np.char.zfill(ids.astype(str), width).astype(f"S{width}")
    body = np.frombuffer(digits.tobytes(), dtype=np.uint8).reshape(len(ids), width)
    prefix = np.frombuffer(b"acct-", dtype=np.uint8)
    rows = np.hstack([np.broadcast_to(prefix, (len(ids), 5)), body])
    size = 5 + width
    offsets = np.arange(len(ids) + 1, dtype=np.int32) * size
    return pa.Array.from_buffers(
        pa.binary(), len(ids), [None, pa.py_buffer(offsets), pa.py_buffer(rows.tobytes())]
    )


def generate_events(
    config: GeneratorConfig, partition: int = 0, start: int = 0, count: int | None = None
) -> GeneratedEvents:
    """Generate events `start..start+count` of one partition, the same for the same arguments."""
    per_part = partition_sizes(config)[partition]
    count = per_part - start if count is None else min(count, per_part - start)
    if count <= 0:
        return GeneratedEvents(pa.array([], type=pa.binary()), np.empty(0, dtype=np.int64))
    rng = np.random.default_rng([config.seed, partition, start])
    k = config.accounts
    ranks = np.arange(1, k + 1, dtype=np.float64)
    cdf = np.cumsum(ranks**-config.zipf)
    cdf /= cdf[-1]
    ids = np.searchsorted(cdf, rng.random(count))
    # Account ids are a fixed permutation of popularity ranks.
    perm = np.random.default_rng([config.seed, 0xACC]).permutation(k)
    ids = perm[np.minimum(ids, k - 1)]
    # Partition i holds the accounts whose id is i modulo the partition count.
    parts = config.partitions
    ids = (ids // parts) * parts + partition
    ids = np.where(ids < k, ids, partition % k)
    index = np.arange(start, start + count, dtype=np.int64)
    ts = config.start_ms + (index * config.span_ms) // max(per_part, 1)
    disorder = rng.random(count) < config.disorder_rate
    ts[disorder] += rng.integers(-config.disorder_ms, config.disorder_ms + 1, int(disorder.sum()))
    late = rng.random(count) < config.late_rate
    ts[late] -= rng.integers(25 * 3_600_000, 49 * 3_600_000, int(late.sum()))
    bursts = min(config.burst_accounts, k)
    if bursts and per_part:
        burst_rng = np.random.default_rng([config.seed, 0xB0057])
        burst_ids = burst_rng.choice(k, bursts, replace=False)
        burst_at = burst_rng.integers(0, max(per_part - 1, 1), bursts)
        # A burst takes every 4th event of its stretch: its events span 4x its size in positions.
        stretch = min(config.burst_size * 4, per_part)
        for acct, at in zip(burst_ids.tolist(), burst_at.tolist(), strict=True):
            if acct % parts != partition:
                continue
            at = min(at, per_part - stretch)
            lo, hi = max(at, start), min(at + stretch, start + count)
            if lo >= hi:
                continue
            sel = np.arange(lo, hi, 4) - start
            ids[sel] = acct
    ts = np.maximum(ts, 0)
    return GeneratedEvents(_account_names(ids), ts)


def partition_sizes(config: GeneratorConfig) -> list[int]:
    """Return the number of events of each generator partition."""
    base, extra = divmod(config.events, config.partitions)
    return [base + (1 if i < extra else 0) for i in range(config.partitions)]


class _GeneratorPartition(StatefulSourcePartition[EventBatch, int]):
    def __init__(self, name: str, config: GeneratorConfig, index: int, resume: int | None) -> None:
        self.name = name
        self.config = config
        self.index = index
        self.pos = resume or 0
        self.size = partition_sizes(config)[index]
        # Partitions advance together one batch at a time: a batch covers at most an hour of
        # event time, so reading several partitions adds little disorder.
        per_hour = self.size * 3_600_000 // max(config.span_ms, 1)
        self.batch = int(min(config.batch_size, max(1_000, per_hour)))

    def next_batch(self) -> list[EventBatch]:
        if self.pos >= self.size:
            raise StopIteration
        ev = generate_events(self.config, self.index, self.pos, self.batch)
        positions = np.arange(self.pos, self.pos + len(ev.ts), dtype=np.int64)
        self.pos += len(ev.ts)
        return [EventBatch(self.name, ev.accounts, ev.ts, positions)]

    def snapshot(self) -> int:
        return self.pos


class GeneratorSource(FixedPartitionedSource[EventBatch, int]):
    """A seeded, bounded stream of events resembling production signal errors."""

    def __init__(self, config: GeneratorConfig) -> None:
        if config.events < 0 or config.accounts < 1 or config.partitions < 1:
            raise ValueError(
                "generator needs events >= 0, accounts >= 1 and partitions >= 1, got "
                f"{config.events}, {config.accounts}, {config.partitions}"
            )
        self.config = config

    def list_parts(self) -> list[str]:
        """Return the partition names, fixed by the seed and partition count."""
        c = self.config
        return [f"gen:{c.seed}:{i}" for i in range(c.partitions)]

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> _GeneratorPartition:
        """Build one partition, at `resume_state` if resuming."""
        return _GeneratorPartition(
            for_part, self.config, int(for_part.rsplit(":", 1)[1]), resume_state
        )


SPEED_TEST_FIELDS = ("download_ratio", "upload_ratio", "latency_ms", "packet_loss_pct")
"""Measures of a generated speed test (the bundled `speed_tests` source's number fields)."""


def generate_speed_tests(config: GeneratorConfig) -> tuple[pa.Array, np.ndarray, dict]:
    """Draw `config.events` speed tests: accounts, event times and measures, in time order.

    Accounts (`acct-NNNNNNNN`, as for signal errors) are drawn uniformly; each account has a
    line quality that sets its speed ratios and latency, and every test adds noise. Times span
    ``[start_ms, start_ms + span_ms)``; a fraction `disorder_rate` arrives up to `disorder_ms`
    out of order. The same config gives the same tests.
    """
    rng = np.random.default_rng([config.seed, 0x5EED])
    n = config.events
    ids = rng.integers(0, config.accounts, n)
    ts = config.start_ms + np.sort(rng.integers(0, max(config.span_ms, 1), n))
    disorder = rng.random(n) < config.disorder_rate
    ts[disorder] += rng.integers(-config.disorder_ms, 1, int(disorder.sum()))
    quality = np.random.default_rng([config.seed, 0xACC]).beta(5, 2, config.accounts)[ids]
    fields = {
        "download_ratio": np.round(np.clip(quality + rng.normal(0, 0.08, n), 0.02, 1.3), 3),
        "upload_ratio": np.round(np.clip(quality + rng.normal(0, 0.1, n), 0.02, 1.3), 3),
        "latency_ms": np.round(8 + (1 - quality) * 120 + rng.exponential(10, n), 1),
        "packet_loss_pct": np.round(np.clip(rng.exponential(0.3, n) * (1.5 - quality), 0, 100), 2),
    }
    return _account_names(ids), np.maximum(ts, 0), fields
