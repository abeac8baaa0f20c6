"""The history store: every feature update appended to Parquet files partitioned by day.

Layout: ``ROOT/FEATURE/day=YYYY-MM-DD/part-WRITER-SEQ.parquet`` with columns `account`,
`event_time` (UTC, ms), `value` (int64 for counts, float64 otherwise), `pipeline_version` and
`feature_version` (the feature definition's version). Writers buffer rows and write one file per
day touched at each flush; several writers (one per worker) never share a file.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
from streamml.state._parquet import DAY_MS, discard_parts, utc_day, write_part

__all__ = ["HISTORY_SCHEMA", "HistoryWriter", "read_history"]

HISTORY_SCHEMA = pa.schema(
    [
        ("account", pa.string()),
        ("event_time", pa.timestamp("ms", tz="UTC")),
        ("value", pa.int64()),
        ("pipeline_version", pa.string()),
        ("feature_version", pa.string()),
    ]
)


class HistoryWriter:
    """Append feature updates of one feature; flushes every `rows_per_flush` rows and on close."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        feature: str,
        pipeline_version: str,
        *,
        writer_id: str | None = None,
        rows_per_flush: int = 1_000_000,
        seq: int = 0,
        value_type: pa.DataType | None = None,
        feature_version: str = "",
    ) -> None:
        self.dir = Path(root) / feature
        self.pipeline_version = pipeline_version
        self.feature_version = feature_version
        self.value_type = pa.int64() if value_type is None else value_type
        self.schema = HISTORY_SCHEMA.set(2, pa.field("value", self.value_type))
        self.writer_id = writer_id or f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.rows_per_flush = rows_per_flush
        self._accounts: list[pa.Array] = []
        self._ts: list[np.ndarray] = []
        self._values: list[np.ndarray] = []
        self._buffered = 0
        self.seq = seq
        self.rows_written = 0

    def append(self, accounts: pa.Array, ts: np.ndarray, values: np.ndarray) -> None:
        """Buffer updates: the account, the event time of the update and the value after it."""
        if not len(ts):
            return
        self._accounts.append(accounts)
        self._ts.append(np.asarray(ts, dtype=np.int64))
        self._values.append(np.asarray(values).astype(self.value_type.to_pandas_dtype()))
        self._buffered += len(ts)
        if self._buffered >= self.rows_per_flush:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows, one file per day."""
        if not self._buffered:
            return
        accounts = pa.concat_arrays(
            [a.cast(pa.binary()) if pa.types.is_string(a.type) else a for a in self._accounts]
        ).cast(pa.string())
        ts = np.concatenate(self._ts)
        values = np.concatenate(self._values)
        self._accounts, self._ts, self._values, self._buffered = [], [], [], 0
        days = ts // DAY_MS
        order = np.argsort(days, kind="stable")
        days_sorted = days[order]
        cuts = np.flatnonzero(np.diff(days_sorted)) + 1
        for idx in np.split(order, cuts):
            table = pa.table(
                [
                    accounts.take(pa.array(idx)),
                    pa.array(ts[idx], type=pa.timestamp("ms", tz="UTC")),
                    pa.array(values[idx], type=self.value_type),
                    pa.array([self.pipeline_version] * len(idx), type=pa.string()),
                    pa.array([self.feature_version] * len(idx), type=pa.string()),
                ],
                schema=self.schema,
            )
            day = utc_day(int(days[idx[0]]))
            write_part(self.dir / f"day={day}", self.writer_id, self.seq, table)
            self.seq += 1
            self.rows_written += len(idx)

    def close(self) -> None:
        """Flush what is buffered."""
        self.flush()

    def discard_from(self, seq: int) -> None:
        """Delete this writer's files numbered `seq` and later, and drop what is buffered."""
        self._accounts, self._ts, self._values, self._buffered = [], [], [], 0
        discard_parts(self.dir, "day=*", self.writer_id, seq)


def read_history(root: str | os.PathLike[str], feature: str = "signal_errors_24h") -> pa.Table:
    """Read every update of `feature` as one table, with a `day` column from the partitioning."""
    path = Path(root) / feature
    if not path.exists():
        return HISTORY_SCHEMA.empty_table()
    dataset = ds.dataset(path, format="parquet", partitioning="hive", schema=None)
    return dataset.to_table()
