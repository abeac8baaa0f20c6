"""The rolling count after restarts: what a shard snapshots and what it emits again."""

import numpy as np
import pyarrow as pa
from streamml.operators.records import EventBatch
from streamml.operators.rolling import KIND_ALERT, RollingConfig, _RollingLogic
from streamml.state.layout import StateLayout

PARTITION = "file:/data/errors.csv"
T0 = 1_767_225_600_000


def chunk(account: bytes, first: int, n: int) -> EventBatch:
    """`n` events of `account` at positions first..first+n-1, read through the last one."""
    positions = np.arange(first, first + n, dtype=np.int64)
    return EventBatch(
        PARTITION,
        pa.array([account] * n, pa.binary()),
        T0 + positions * 1000,
        positions,
        shard=0,
        through=first + n - 1,
    )


def alert_positions(updates) -> list[int]:
    out = []
    for u in updates:
        kind = u.rows.column("kind").to_numpy()
        out += u.rows.column("position").to_numpy()[kind == KIND_ALERT].tolist()
    return out


def run(config: RollingConfig, resume, *batches: EventBatch):
    """Apply `batches` in a new logic resumed from `resume`; return its updates and snapshot."""
    logic = _RollingLogic(config, resume)
    updates = [u for b in batches for u in logic.on_batch([b])[0]]
    snapshot = logic.snapshot()
    logic._store.close()
    return updates, snapshot


def test_snapshot_after_a_replay_claims_only_what_was_emitted_again(tmp_path):
    """A run killed after applying two chunks, restarted from no snapshot, snapshots after the
    first chunk, is killed again and resumed from that snapshot: the second chunk's alert is
    emitted again, because the snapshot claims only the first chunk even though RocksDB holds
    both."""
    layout = StateLayout(shards=1)
    layout.ensure(tmp_path / "state")
    config = RollingConfig(
        tmp_path / "state",
        layout,
        threshold=2,
        recovery_dir=tmp_path / "recovery",
        source_step="error_count.source",
    )
    first, second = chunk(b"acct-a", 0, 3), chunk(b"acct-b", 3, 3)

    killed, _ = run(config, None, first, second)
    assert alert_positions(killed) == [2, 5]

    replayed, snapshot = run(config, None, first)
    assert alert_positions(replayed) == [2]
    assert snapshot == {PARTITION: 2}

    resumed, final = run(config, snapshot, second)
    assert alert_positions(resumed) == [5]
    assert resumed[0].replayed == 3 and resumed[0].skipped == 3
    assert final == {PARTITION: 5}
