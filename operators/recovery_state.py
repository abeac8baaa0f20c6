"""What the flows keep in a Bytewax recovery dir besides Bytewax's own snapshots.

```
RECOVERY_DIR/
  part-N.sqlite3            Bytewax's recovery partitions (snapshots of sources, state, sinks)
  streamml-recovery.json    the state dir this recovery dir belongs to (its id and path)
  streamml-outputs/         first-start marks: what each output and source partition was when
                            the flow first ran with this recovery dir
```

A recovery dir belongs to one state dir: Bytewax's snapshots say where to resume reading, and
the state dir says what was applied; the two only make sense together. `bind_recovery_dir`
checks the pair before anything is written and refuses a mismatch.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from streamml.state.errors import RefusedError
from streamml.state.files import atomic_write, create_exclusive
from streamml.state.layout import state_id
from streamml.state.rolling_store import stored_positions

__all__ = [
    "BINDING_FILE",
    "ROUTING_FILE",
    "StoredStart",
    "bind_recovery_dir",
    "bind_routing",
    "check_output_file",
    "check_output_length",
    "committed_positions",
    "first_start",
    "kept_snapshot_positions",
    "peek_first_start",
    "recovery_binding",
]

BINDING_FILE = "streamml-recovery.json"
_MARKS = "streamml-outputs"


def first_start(recovery_dir: Path | None, output: str, current: Any) -> Any:
    """Return what `output` was when the flow first started with `recovery_dir`.

    The first call for an output records `current` in the recovery dir; later calls (a restart
    before any snapshot was committed) return the recorded value, so the restart can cut the
    output back to where the run began. The mark is written to a temporary file and linked into
    place, so a kill at any moment leaves either no mark or a whole one. Without a recovery dir,
    returns `current`.
    """
    if recovery_dir is None:
        return current
    mark = _mark_path(recovery_dir, output)
    if not mark.exists():
        mark.parent.mkdir(parents=True, exist_ok=True)
        if create_exclusive(mark, orjson.dumps({"output": output, "start": current})):
            return current
    return _read_mark(mark, recovery_dir, output)


def peek_first_start(recovery_dir: Path | None, output: str) -> Any:
    """Return what `first_start` recorded for `output`, or None (recording nothing)."""
    if recovery_dir is None:
        return None
    mark = _mark_path(recovery_dir, output)
    if not mark.exists():
        return None
    return _read_mark(mark, recovery_dir, output)


def _mark_path(recovery_dir: Path, output: str) -> Path:
    digest = hashlib.sha256(output.encode()).hexdigest()[:32]
    return Path(recovery_dir) / _MARKS / f"{digest}.json"


def _read_mark(mark: Path, recovery_dir: Path, output: str) -> Any:
    try:
        return orjson.loads(mark.read_bytes())["start"]
    except (orjson.JSONDecodeError, KeyError) as exc:
        raise RefusedError(
            f"the recovery mark {mark} (for {output}) is unreadable ({exc}); "
            f"start over with `streamml recovery reset {recovery_dir} --state-dir STATE_DIR`"
        ) from None


def check_output_length(path: Path, resume: int, recovery_dir: Path | None) -> None:
    """Raise `RefusedError` when the output at `path` is gone or shorter than `resume` bytes."""
    size = path.stat().st_size if path.exists() else None
    if (size or 0) < resume:
        state = "is gone" if size is None else f"is {size} bytes"
        raise RefusedError(
            f"output {path} {state}, but recovery dir {recovery_dir} resumes it at byte "
            f"{resume}: what was written to it before cannot be told from what is new. Restore "
            f"the file, or start over with `streamml recovery reset {recovery_dir} --state-dir "
            "STATE_DIR` (the output is then appended to from where the state dir stopped)"
        )


class StoredStart:
    """Where each source partition continues when Bytewax has no snapshot of it.

    Without a recovery dir: after the position every shard of the state dir has applied it
    through (read once, from read-only opens, when first asked). With one: after that position
    as it was when the flow first ran with the recovery dir, so a restart before the first
    snapshot reads again what the first run read and cut from the outputs.
    """

    def __init__(
        self, state_dir: Path | None, shards: int, recovery_dir: Path | None = None
    ) -> None:
        self.state_dir = state_dir
        self.shards = shards
        self.recovery_dir = recovery_dir
        self.fed_by: Callable[[str], range] | None = None
        """With partition routing: a partition's name -> the shards it feeds (only they count)."""
        self._applied: dict[str, int] | None = None

    def through(self, partition: str) -> int:
        """Return the position `partition` was applied through (-1: read it from its start)."""
        if self.state_dir is None:
            return -1
        if self._applied is None:
            self._applied = stored_positions(self.state_dir, self.shards, self.fed_by)
        applied = self._applied.get(partition, -1)
        return first_start(self.recovery_dir, f"source:{partition}", applied)


ROUTING_FILE = "streamml-routing.json"


def bind_routing(recovery_dir: str | os.PathLike[str], routing: str, workers: int) -> None:
    """Tie `recovery_dir` to the shard routing of its first run, refusing another one.

    With partition routing the keys of the shards' state depend on the worker count
    (`streamml.operators.routing.key_on_worker`): a resume with another count, or another
    routing, would not find the state snapshotted under the old keys, and would emit again
    rows the outputs already hold. A recovery dir with snapshots and no routing record ran
    with exchange routing.
    """
    recovery_dir = Path(recovery_dir)
    wanted = {"routing": routing, "workers": workers if routing == "partition" else None}
    path = recovery_dir / ROUTING_FILE
    if not path.exists():
        if routing == "exchange" or not _has_snapshots(recovery_dir):
            create_exclusive(path, orjson.dumps(wanted))
        else:
            create_exclusive(path, orjson.dumps({"routing": "exchange", "workers": None}))
    stored = orjson.loads(path.read_bytes())
    if stored != wanted:

        def said(r: dict[str, Any]) -> str:
            if r.get("routing") == "partition":
                return f"partition routing over {r.get('workers')} worker(s)"
            return "exchange routing"

        raise RefusedError(
            f"recovery dir {recovery_dir} was written with {said(stored)}, but this run asks "
            f"for {said(wanted)}: the shards' snapshots are keyed by the routing, so resuming "
            "would emit again what the outputs hold. Run with the recorded routing and process "
            f"count, or start the recovery dir over with `streamml recovery reset {recovery_dir} "
            "--state-dir STATE_DIR`"
        )


def recovery_binding(recovery_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Return the state dir a recovery dir belongs to (``{"state_id", "state_dir"}``), or None."""
    path = Path(recovery_dir) / BINDING_FILE
    try:
        return orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except orjson.JSONDecodeError as exc:
        raise RefusedError(f"{path} is unreadable ({exc}); reset the recovery dir") from None


def _has_snapshots(recovery_dir: Path) -> bool:
    for part in sorted(recovery_dir.glob("part-*.sqlite3")):
        with sqlite3.connect(f"file:{part}?mode=ro", uri=True) as db:
            if db.execute("SELECT 1 FROM snaps LIMIT 1").fetchone():
                return True
    return False


def bind_recovery_dir(
    recovery_dir: str | os.PathLike[str], state_dir: str | os.PathLike[str], *, fresh_state: bool
) -> None:
    """Check that `recovery_dir` belongs to `state_dir`, binding a new recovery dir to it.

    Refuses (`RefusedError`, nothing written) when the recovery dir belongs to another state dir
    (or to one that was deleted and created again), and when a recovery dir that never ran is
    used on a state dir that already holds applied input (`fresh_state` False): bind it
    explicitly with `streamml recovery reset`.
    """
    recovery_dir = Path(recovery_dir)
    sid = state_id(state_dir)
    bound = recovery_binding(recovery_dir)
    reset = f"streamml recovery reset {recovery_dir} --state-dir {state_dir}"
    if bound is None:
        if _has_snapshots(recovery_dir):
            raise RefusedError(
                f"recovery dir {recovery_dir} holds snapshots but does not say which state dir "
                f"they belong to, so it cannot be resumed on state dir {state_dir}; start it "
                f"over for this state dir with `{reset}`"
            )
        if not fresh_state:
            raise RefusedError(
                f"recovery dir {recovery_dir} is new but state dir {state_dir} (id {sid}) "
                "already holds applied input; a new recovery dir on old state cannot tell what "
                f"was emitted before. Bind it to this state dir with `{reset}` (reading "
                "continues where the state dir stopped), or use a new --state-dir"
            )
        atomic_write(
            recovery_dir / BINDING_FILE,
            orjson.dumps({"state_id": sid, "state_dir": str(Path(state_dir).resolve())}),
        )
        return
    if bound.get("state_id") != sid:
        raise RefusedError(
            f"recovery dir {recovery_dir} belongs to state dir {bound.get('state_dir')} "
            f"(id {bound.get('state_id')}), but state dir {state_dir} has id {sid}; resuming "
            "would skip or double input. Use the recovery dir of this state dir, a new "
            f"--recovery-dir, or start this one over with `{reset}`"
        )


def check_output_file(recovery_dir: Path | None, step_id: str, path: Path) -> None:
    """Refuse a run whose output file at `path` is gone or shorter than where it resumes.

    The resume point is the file's length in the sink `step_id`'s snapshot at the epoch a
    restart resumes from (see `committed_positions`), or, with none, its length when the flow
    first ran with the recovery dir.
    """
    if recovery_dir is None:
        return
    key = str(Path(path).resolve())
    resume = committed_positions(recovery_dir, step_id).get(key)
    if resume is None:
        resume = peek_first_start(recovery_dir, key)
    if resume:
        check_output_length(path, resume, recovery_dir)


def committed_positions(recovery_dir: str | os.PathLike[str], step_id: str) -> dict[str, int]:
    """Return, per partition of `step_id`, the oldest position snapshotted up to the resume epoch.

    A restart resumes from the last epoch every recovery partition has committed; a snapshot
    row of a later epoch was written by a run killed before it committed that epoch, and is not
    where anything resumes (it is replaced when that epoch is reached again), so it is left out.
    Of the rows kept up to the resume epoch the oldest is a lower bound of the resume point, as
    in `kept_snapshot_positions`. Partitions with no such row are absent, and so is everything
    when no epoch is committed.
    """
    epochs: list[int] = []
    rows: list[tuple[str, int, bytes | None]] = []
    parts = sorted(Path(recovery_dir).glob("part-*.sqlite3"))
    for part in parts:
        try:
            with sqlite3.connect(f"file:{part}?mode=ro", uri=True, timeout=1.0) as db:
                (epoch,) = db.execute("SELECT max(commit_epoch) FROM commits").fetchone()
                rows += db.execute(
                    "SELECT state_key, snap_epoch, ser_change FROM snaps WHERE step_id = ?",
                    (step_id,),
                ).fetchall()
        except sqlite3.Error:
            return {}
        if epoch is None:
            return {}
        epochs.append(int(epoch))
    if not epochs:
        return {}
    resume = min(epochs)
    out: dict[str, int] = {}
    for key, epoch, blob in rows:
        if epoch > resume or blob is None:
            continue
        state = pickle.loads(blob)
        if isinstance(state, int):
            out[key] = min(out.get(key, state), state)
    return out


def kept_snapshot_positions(recovery_dir: str | os.PathLike[str], step_id: str) -> dict[str, int]:
    """Return, per partition of `step_id`, the oldest position snapshotted for it still kept.

    Bytewax resumes a source partition from its snapshot at the resume epoch; every snapshot it
    still keeps is at or after that one's predecessors, so the oldest kept position is a safe
    lower bound of where any restart resumes reading. Partitions with no snapshot are absent.
    The same holds for the byte lengths that sinks snapshot.
    """
    out: dict[str, int] = {}
    if not step_id:
        return out
    for part in sorted(Path(recovery_dir).glob("part-*.sqlite3")):
        try:
            with sqlite3.connect(f"file:{part}?mode=ro", uri=True, timeout=1.0) as db:
                rows = db.execute(
                    "SELECT state_key, ser_change FROM snaps WHERE step_id = ?", (step_id,)
                ).fetchall()
        except sqlite3.Error:
            return {}
        for key, blob in rows:
            if blob is None:
                continue
            state = pickle.loads(blob)
            position = state if isinstance(state, int) else None
            if position is not None:
                out[key] = min(out.get(key, position), position)
    return out
