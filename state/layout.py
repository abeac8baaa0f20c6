"""The on-disk layout of a state directory and the settings it was created with.

```
STATE_DIR/
  streamml-state.json   settings every reader and writer must agree on
  shards/shard-NNN/     one RocksDB database per shard
  ondemand/shard-NNN/   answers of on-demand services, one RocksDB database per shard
  history/              default location of the history store (Parquet, by day)
```
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

__all__ = ["LAYOUT_FILE", "IncompatibleStateError", "StateLayout"]

LAYOUT_FILE = "streamml-state.json"
_FORMAT = 1


class IncompatibleStateError(ValueError):
    """A state directory was created with settings that differ from the ones requested."""


@dataclass(frozen=True, slots=True)
class StateLayout:
    """Settings fixed when a state directory is created."""

    feature: str = "signal_errors_24h"
    feature_id: int = 1
    shards: int = 16
    bucket_ms: int = 3_600_000
    window_buckets: int = 24
    format: int = _FORMAT

    def __post_init__(self) -> None:
        if self.shards < 1 or self.shards > 4096:
            raise ValueError(f"shards must be in [1, 4096], got {self.shards}")
        if self.bucket_ms < 1:
            raise ValueError(f"bucket_ms must be >= 1, got {self.bucket_ms}")
        if self.window_buckets < 1 or self.window_buckets > 4096:
            raise ValueError(f"window_buckets must be in [1, 4096], got {self.window_buckets}")

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
        """Create `state_dir` with this layout, or check that the stored one is the same."""
        stored = StateLayout.read(state_dir)
        if stored is None:
            root = Path(state_dir)
            root.mkdir(parents=True, exist_ok=True)
            tmp = root / f"{LAYOUT_FILE}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
            os.replace(tmp, root / LAYOUT_FILE)
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
        return stored
