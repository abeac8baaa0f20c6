"""The history sink writes a shard's rows within its flush interval, not only at snapshots."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from streamml.operators.sinks import HistorySink
from streamml.state.definitions import count_feature
from streamml.state.history import read_history

FEATURE = count_feature("signal_errors_24h", 3_600_000, 24)
DAY0 = 1_767_225_600_000


@dataclass
class _Rows:
    """The two members of a shard update the history sink reads: its features and their rows."""

    start: int
    n: int

    @property
    def features(self) -> tuple[str, ...]:
        return (FEATURE.name,)

    def feature_rows(self, name: str):
        assert name == FEATURE.name
        i = np.arange(self.start, self.start + self.n)
        accounts = pa.array([f"acct-{k % 7}" for k in i])
        return accounts, DAY0 + i * 1000, i % 5, np.ones(self.n), i


def _rows(root: Path) -> list[int]:
    table = read_history(root, FEATURE.name)
    return sorted(table.column("position").to_pylist())


def test_rows_reach_the_store_within_the_flush_interval_without_a_snapshot(
    tmp_path: Path,
) -> None:
    sink = HistorySink(tmp_path, (FEATURE,), "v1", shards=1, flush_interval_s=0.3)
    part = sink.build_part("history", "shard-000", None)
    part.write_batch([_Rows(0, 10)])
    assert _rows(tmp_path) == []  # buffered: written at the interval or a snapshot
    time.sleep(0.35)
    part.write_batch([_Rows(10, 5)])
    assert _rows(tmp_path) == list(range(15))
    part.write_batch([_Rows(15, 3)])
    _writer, seq = part.snapshot()[FEATURE.name]
    assert _rows(tmp_path) == list(range(18))
    assert seq == 2  # one file at the interval, one at the snapshot (one day each)
    part.close()


def test_a_resumed_shard_removes_what_was_written_after_its_snapshot(tmp_path: Path) -> None:
    sink = HistorySink(tmp_path, (FEATURE,), "v1", shards=1, flush_interval_s=0.2)
    part = sink.build_part("history", "shard-000", None)
    part.write_batch([_Rows(0, 4)])
    state = part.snapshot()
    part.write_batch([_Rows(4, 4)])
    time.sleep(0.25)
    part.write_batch([_Rows(8, 4)])  # written by the interval: after the snapshot
    assert _rows(tmp_path) == list(range(12))
    # the process dies here; the resumed run replays from the snapshot and writes them again
    resumed = sink.build_part("history", "shard-000", state)
    assert _rows(tmp_path) == list(range(4))
    resumed.write_batch([_Rows(4, 8)])
    resumed.close()
    assert _rows(tmp_path) == list(range(12))


def test_a_shard_writes_at_the_row_bound_between_intervals(tmp_path: Path) -> None:
    sink = HistorySink(tmp_path, (FEATURE,), "v1", shards=1, rows_per_flush=100)
    part = sink.build_part("history", "shard-000", None)
    part.write_batch([_Rows(0, 60)])
    assert _rows(tmp_path) == []
    part.write_batch([_Rows(60, 60)])
    assert _rows(tmp_path) == list(range(120))
    part.close()
