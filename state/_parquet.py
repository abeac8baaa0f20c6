"""Buffered writers of records to Parquet files partitioned by day, and reading them back.

Layout: ``ROOT/date=YYYY-MM-DD/part-WRITER-SEQ.parquet`` (UTC days). As in the history store,
which writes and discards its files with the same `write_part` and `discard_parts`: each writer
(one per worker) owns its files, writes one file per day touched at each flush
through a hidden temporary file renamed into place, numbers its files with a sequence, and can
delete its files from a sequence number on (recovery drops what a replay will write again).
"""

from __future__ import annotations

import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

__all__ = [
    "DAY_MS",
    "DayPartitionedWriter",
    "discard_parts",
    "part_name",
    "read_partitioned",
    "utc_day",
    "write_part",
]

DAY_MS = 86_400_000
_CONVERT_ROWS = 512
"""Buffered records turned into Arrow columns at a time."""
R = TypeVar("R")
_PARTITIONING = ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive")


def utc_day(day_index: int) -> str:
    """Return the ISO date of UTC day `day_index` (epoch ms // `DAY_MS`)."""
    return datetime.fromtimestamp(day_index * 86_400, tz=UTC).date().isoformat()


def write_part(folder: Path, writer_id: str, seq: int, table: pa.Table) -> None:
    """Write `table` as ``FOLDER/part-WRITER-SEQ.parquet`` via a hidden file renamed in place."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"part-{writer_id}-{seq:06d}.parquet"
    tmp = folder / f".{name}.tmp"
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, folder / name)


def part_name(path: Path) -> tuple[str, int] | None:
    """Return (writer id, sequence) of a file `write_part` wrote, or None for any other file."""
    stem = path.name.removesuffix(".parquet")
    if not stem.startswith("part-") or stem == path.name:
        return None
    writer, _, seq = stem[len("part-") :].rpartition("-")
    return (writer, int(seq)) if seq.isdigit() and writer else None


def discard_parts(root: Path, folders: str, writer_id: str, seq: int) -> None:
    """Delete the files of `writer_id` numbered `seq` and later in the `folders` glob of `root`."""
    for path in root.glob(f"{folders}/part-{writer_id}-*.parquet"):
        name = part_name(path)
        if name is not None and name[0] == writer_id and name[1] >= seq:
            path.unlink()


class DayPartitionedWriter(ABC, Generic[R]):
    """Buffer records and write them as Parquet, one file per UTC day at each flush."""

    schema: pa.Schema
    subdir: str = ""
    """Folder under the root that holds this writer's records ("" for the root itself)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        pipeline_version: str,
        *,
        writer_id: str | None = None,
        rows_per_flush: int = 10_000,
        seq: int = 0,
    ) -> None:
        if rows_per_flush < 1:
            raise ValueError(f"rows_per_flush must be >= 1, got {rows_per_flush}")
        self.dir = Path(root) / self.subdir if self.subdir else Path(root)
        self.pipeline_version = pipeline_version
        self.writer_id = writer_id or f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        if not self.writer_id or "/" in self.writer_id or self.writer_id.startswith("."):
            raise ValueError(f"writer_id must be a plain file-name part, got {self.writer_id!r}")
        self.rows_per_flush = rows_per_flush
        self.seq = seq
        self.rows_written = 0
        self._buffer: list[R] = []
        self._tables: list[pa.Table] = []
        self._days: list[np.ndarray] = []
        self._converted = 0

    @abstractmethod
    def _day_ms(self, record: R) -> int:
        """Return the epoch-ms time whose UTC day partitions `record`."""

    @abstractmethod
    def _table(self, records: Sequence[R]) -> pa.Table:
        """Return `records` as a table of `schema`."""

    def _check(self, record: R) -> None:
        """Raise `ValueError` for a record that cannot be written (default: accept all)."""

    def append(self, record: R) -> None:
        """Buffer one record; flush when `rows_per_flush` are buffered."""
        self.extend((record,))

    def extend(self, records: Iterable[R]) -> None:
        """Buffer several records; flush when `rows_per_flush` are buffered.

        Records are kept as Arrow columns (a few hundred bytes a row, not Python objects)
        once `_CONVERT_ROWS` of them have come.
        """
        for record in records:
            self._check(record)
            self._buffer.append(record)
        if len(self._buffer) >= _CONVERT_ROWS:
            self._convert()
        if self.buffered >= self.rows_per_flush:
            self.flush()

    def _convert(self) -> None:
        if not self._buffer:
            return
        records, self._buffer = self._buffer, []
        days = np.fromiter((self._day_ms(r) // DAY_MS for r in records), np.int64, len(records))
        self._tables.append(self._table(records))
        self._days.append(days)
        self._converted += len(records)

    @property
    def buffered(self) -> int:
        """Records buffered and not yet written."""
        return self._converted + len(self._buffer)

    def flush(self) -> None:
        """Write the buffered records, one file per day, in day order."""
        self._convert()
        if not self._tables:
            return
        table = pa.concat_tables(self._tables) if len(self._tables) > 1 else self._tables[0]
        days = np.concatenate(self._days)
        self._tables, self._days, self._converted = [], [], 0
        for day_index in np.unique(days).tolist():
            rows = (
                table
                if len(days) and (days == day_index).all()
                else table.filter(pa.array(days == day_index))
            )
            write_part(self.dir / f"date={utc_day(day_index)}", self.writer_id, self.seq, rows)
            self.seq += 1
            self.rows_written += rows.num_rows

    def close(self) -> None:
        """Flush what is buffered."""
        self.flush()

    def discard_from(self, seq: int) -> None:
        """Delete this writer's files numbered `seq` and later, and drop what is buffered."""
        self._buffer, self._tables, self._days, self._converted = [], [], [], 0
        discard_parts(self.dir, "date=*", self.writer_id, seq)


def read_partitioned(
    root: str | os.PathLike[str],
    schema: pa.Schema,
    filter: ds.Expression | None = None,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """Read every file under `root` as one table of `schema` plus the `date` partition column.

    With `columns`, only those columns are read.
    """
    full = schema.append(pa.field("date", pa.string()))
    cols = None if columns is None else list(columns)
    path = Path(root)
    if not path.is_dir():
        empty = full.empty_table()
        return empty if cols is None else empty.select(cols)
    dataset = ds.dataset(path, schema=full, format="parquet", partitioning=_PARTITIONING)
    return dataset.to_table(columns=cols, filter=filter)
