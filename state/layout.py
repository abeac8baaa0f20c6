"""The on-disk layout of a state directory and the settings it was created with.

```
STATE_DIR/
  streamml-state.json   settings every reader and writer must agree on
  streamml-id.json      the state dir's id, which recovery dirs record to be tied to it
  shards/shard-NNN/     one RocksDB database per shard, all created with the state dir
  ondemand/shard-NNN/   answers of on-demand services, one RocksDB database per shard
  sources/              what each input is (file identity, topic incarnation), see `sources`
  history/              default location of the history store (Parquet, by day)
```
"""

from __future__ import annotations

import fcntl
import json
import os
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import orjson
from streamml.state.errors import RefusedError
from streamml.state.files import atomic_write, create_exclusive

__all__ = [
    "ID_FILE",
    "LAYOUT_FILE",
    "IncompatibleStateError",
    "IncompleteStateError",
    "StateLayout",
    "missing_shards",
    "state_id",
]

LAYOUT_FILE = "streamml-state.json"
ID_FILE = "streamml-id.json"
_FORMAT = 1


class IncompatibleStateError(RefusedError, ValueError):
    """A state directory was created with settings that differ from the ones requested."""


class IncompleteStateError(RefusedError, FileNotFoundError):
    """A state directory lacks shard databases it was created with (copied or half deleted)."""


def state_id(state_dir: str | os.PathLike[str]) -> str:
    """Return the id of `state_dir`, giving it one if it has none yet."""
    path = Path(state_dir) / ID_FILE
    create_exclusive(path, orjson.dumps({"id": uuid.uuid4().hex}))
    return orjson.loads(path.read_bytes())["id"]


def missing_shards(state_dir: str | os.PathLike[str], layout: StateLayout) -> list[int]:
    """Return the shards of `layout` whose database is not in `state_dir`."""
    return [
        s
        for s in range(layout.shards)
        if not (StateLayout.shard_dir(state_dir, s) / "CURRENT").exists()
    ]


@dataclass(frozen=True, slots=True)
class StateLayout:
    """Settings fixed when a state directory is created."""

    feature: str = "signal_errors_24h"
    feature_id: int = 1
    shards: int = 16
    bucket_ms: int = 3_600_000
    window_buckets: int = 24
    format: int = _FORMAT
    shard_hash: str = "crc32"
    """How an account's shard is chosen (`streamml.state.sharding`): ``crc32``, or ``murmur2``,
    Kafka's default key partitioner, which lets a flow keep each shard in the process that reads
    its input partition (``--routing partition``)."""

    def __post_init__(self) -> None:
        if self.shard_hash not in ("crc32", "murmur2"):
            raise ValueError(f"shard_hash must be crc32 or murmur2, got {self.shard_hash!r}")
        if self.shards < 1 or self.shards > 4096:
            raise ValueError(f"shards must be in [1, 4096], got {self.shards}")
        if self.bucket_ms < 1:
            raise ValueError(f"bucket_ms must be >= 1, got {self.bucket_ms}")
        if self.window_buckets < 1 or self.window_buckets > 4096:
            raise ValueError(f"window_buckets must be in [1, 4096], got {self.window_buckets}")

    def shard_of(self, account: bytes) -> int:
        """Return the shard of one account in this layout."""
        from streamml.state.sharding import shard_of

        return shard_of(account, self.shards, self.shard_hash)

    @property
    def window_ms(self) -> int:
        """Length of the window in milliseconds."""
        return self.bucket_ms * self.window_buckets

    @staticmethod
    def shard_dir(state_dir: str | os.PathLike[str], shard: int) -> Path:
        """Return the directory of one shard's database."""
        return Path(state_dir) / "shards" / f"shard-{shard:03d}"

    @staticmethod
    def ondemand_dir(state_dir: str | os.PathLike[str], shard: int) -> Path:
        """Return the directory of one shard's database of on-demand answers."""
        return Path(state_dir) / "ondemand" / f"shard-{shard:03d}"

    @classmethod
    def read(cls, state_dir: str | os.PathLike[str]) -> StateLayout | None:
        """Return the layout stored in `state_dir`, or None if it holds no state yet."""
        path = Path(state_dir) / LAYOUT_FILE
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def ensure(self, state_dir: str | os.PathLike[str]) -> StateLayout:
        """Create `state_dir` with this layout, or check that the stored one is the same.

        A new state dir gets its id and every shard database before its layout file, which is
        written last: a state dir with a layout file is complete.
        """
        stored = StateLayout.read(state_dir)
        if stored is None:
            from streamml.state.rolling_store import create_shard

            root = Path(state_dir)
            root.mkdir(parents=True, exist_ok=True)
            with open(root / ".create.lock", "wb") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                stored = StateLayout.read(state_dir)
                if stored is None:
                    state_id(root)
                    for shard in range(self.shards):
                        create_shard(StateLayout.shard_dir(root, shard))
                    body = (json.dumps(asdict(self), indent=2) + "\n").encode()
                    atomic_write(root / LAYOUT_FILE, body)
                    return self
        if stored != self:
            diff = {
                f.name: (getattr(stored, f.name), getattr(self, f.name))
                for f in fields(self)
                if getattr(stored, f.name) != getattr(self, f.name)
            }
            detail = ", ".join(f"{k}: stored {a!r}, requested {b!r}" for k, (a, b) in diff.items())
            raise IncompatibleStateError(
                f"state directory {state_dir} was created with other settings ({detail}); "
                "use the stored settings or a new --state-dir"
            )
        stored.check_complete(state_dir)
        return stored

    def check_complete(self, state_dir: str | os.PathLike[str]) -> None:
        """Raise `IncompleteStateError` naming the shards whose database is missing."""
        missing = missing_shards(state_dir, self)
        if missing:
            names = ", ".join(f"shard-{s:03d}" for s in missing[:8])
            more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
            raise IncompleteStateError(
                f"state directory {state_dir} is incomplete: {len(missing)} of {self.shards} "
                f"shard databases are missing ({names}{more}); its values would be wrong. "
                "Restore the whole directory, or rebuild it by running the flow into a new "
                "--state-dir"
            )
