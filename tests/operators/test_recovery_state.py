"""Where a restart resumes an output, read from a Bytewax recovery dir's tables."""

import pickle
import sqlite3

from streamml.operators.recovery_state import committed_positions, kept_snapshot_positions


def _part(path, commits, snaps):
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE commits (created_at TEXT, part_index INTEGER, commit_epoch INTEGER)")
    db.execute(
        "CREATE TABLE snaps (created_at TEXT, step_id TEXT, state_key TEXT, snap_epoch INTEGER,"
        " ser_change BLOB)"
    )
    for i, epoch in commits:
        db.execute("INSERT INTO commits VALUES ('t', ?, ?)", (i, epoch))
    for step, key, epoch, value in snaps:
        blob = None if value is None else pickle.dumps(value)
        db.execute("INSERT INTO snaps VALUES ('t', ?, ?, ?, ?)", (step, key, epoch, blob))
    db.commit()
    db.close()


def test_rows_of_epochs_never_committed_are_not_resume_points(tmp_path):
    # Epoch 3 is committed by both partitions; a killed run wrote epoch 5 rows, never committed.
    _part(tmp_path / "part-0.sqlite3", [(0, 2), (0, 3)], [("f.out", "a", 3, 6897)])
    _part(
        tmp_path / "part-1.sqlite3",
        [(1, 3), (1, 4)],
        [("f.out", "a", 5, 13233), ("f.out", "b", 2, 10), ("f.out", "b", 3, None)],
    )
    assert committed_positions(tmp_path, "f.out") == {"a": 6897, "b": 10}
    assert kept_snapshot_positions(tmp_path, "f.out")["a"] == 6897


def test_nothing_committed_means_no_resume_point(tmp_path):
    _part(tmp_path / "part-0.sqlite3", [(0, 1)], [("f.out", "a", 1, 5)])
    _part(tmp_path / "part-1.sqlite3", [], [("f.out", "a", 1, 5)])
    assert committed_positions(tmp_path, "f.out") == {}
    assert committed_positions(tmp_path / "none", "f.out") == {}
