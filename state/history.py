"""The history store: every feature update appended to Parquet files partitioned by day.

Layout: ``ROOT/FEATURE/day=YYYY-MM-DD/part-WRITER-SEQ.parquet`` with columns `account`,
`event_time` (UTC, ms), `value` (int64 for counts, float64 otherwise), `pipeline_version` and
`feature_version` (the feature definition's version) and `contribution` (what the event added to
the feature's window: 1 for a count, else the value of the field it aggregates) and `position`
(the event's source position, -1 when unknown), so a feature's value as of any time can be
recomputed from its rows. Writers buffer rows and write one file per
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
        ("contribution", pa.float64()),
        ("position", pa.int64()),
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
        self._contributions: list[np.ndarray] = []
        self._positions: list[np.ndarray] = []
        self._buffered = 0
        self.seq = seq
        self.rows_written = 0

    def append(
        self,
        accounts: pa.Array,
        ts: np.ndarray,
        values: np.ndarray,
        contributions: np.ndarray | None = None,
        positions: np.ndarray | None = None,
    ) -> None:
        """Buffer updates: account, event time, value after, contribution, source position.

        Without `contributions` every event contributes 1 (a count); without `positions` they
        are -1.
        """
        if not len(ts):
            return
        self._positions.append(
            np.full(len(ts), -1, np.int64) if positions is None else np.asarray(positions, np.int64)
        )
        self._contributions.append(
            np.ones(len(ts)) if contributions is None else np.asarray(contributions, np.float64)
        )
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
        contributions = np.concatenate(self._contributions)
        positions = np.concatenate(self._positions)
        self._accounts, self._ts, self._values, self._buffered = [], [], [], 0
        self._contributions, self._positions = [], []
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
                    pa.array(contributions[idx], type=pa.float64()),
                    pa.array(positions[idx], type=pa.int64()),
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
        self._contributions, self._positions = [], []
        discard_parts(self.dir, "day=*", self.writer_id, seq)


def read_history(root: str | os.PathLike[str], feature: str = "signal_errors_24h") -> pa.Table:
    """Read every update of `feature` as one table, with a `day` column from the partitioning."""
    path = Path(root) / feature
    if not path.exists():
        return HISTORY_SCHEMA.empty_table()
    dataset = ds.dataset(path, format="parquet", partitioning="hive", schema=None)
    return dataset.to_table()
