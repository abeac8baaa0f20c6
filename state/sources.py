"""What each input of a state dir *is*, so a replaced input is never mistaken for the old one.

Positions in the state are kept per source partition name. A file replaced or rotated at the
same path, or a Kafka topic deleted and created again under the same name, would otherwise be
read as if it were the old input, and its first records skipped as "already applied". So the
state dir records, per input, its *incarnations*; each incarnation has its own partition names
(``file:PATH`` for the first, ``file:PATH#2`` for the second, ...) and so its own positions.

A file's identity is its device and inode, its first bytes (up to 4 KiB, kept as they are) and
the length read so far with the SHA-256 of the 4 KiB before that length. A file is the same input
when it still holds those bytes (whatever its inode: a copy or a restore is the same input); it
is a new input when its bytes differ; it is refused as ambiguous when it starts with the same
bytes but is shorter than what was read (truncated in place, or rewritten while being read).

```
STATE_DIR/sources/<sha256 of the input key, 16 hex>.json
  {"key": "file:/abs/path", "incarnations": [{"n": 1, "dev", "ino", "head" (base64), "seen",
   "tail"}, ...]}
```
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from streamml.state.errors import RefusedError
from streamml.state.files import atomic_write

__all__ = ["FileIdentity", "SourceRegistry", "incarnation_name"]

_SAMPLE = 4096


def incarnation_name(base: str, n: int) -> str:
    """Return the partition name of incarnation `n` of `base` (the first keeps the bare name)."""
    return base if n <= 1 else f"{base}#{n}"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """What identifies the content of a file read through `seen` bytes."""

    dev: int
    ino: int
    head: str
    seen: int
    tail: str

    @classmethod
    def of(cls, path: str | os.PathLike[str], seen: int) -> FileIdentity:
        """Fingerprint `path` as read through its first `seen` bytes."""
        st = os.stat(path)
        with open(path, "rb") as f:
            head = f.read(min(_SAMPLE, seen))
            lo = max(0, seen - _SAMPLE)
            f.seek(lo)
            tail = f.read(seen - lo)
        return cls(st.st_dev, st.st_ino, base64.b64encode(head).decode(), seen, _sha(tail))

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {
            "dev": self.dev,
            "ino": self.ino,
            "head": self.head,
            "seen": self.seen,
            "tail": self.tail,
        }

    def verdict(self, path: str | os.PathLike[str]) -> str:
        """Compare with the file now at `path`: ``same``, ``new`` or ``truncated``."""
        size = os.stat(path).st_size
        known = base64.b64decode(self.head)
        with open(path, "rb") as f:
            head = f.read(len(known))
            if size < self.seen:
                return "truncated" if known.startswith(head) else "new"
            same_head = head == known
            lo = max(0, self.seen - _SAMPLE)
            f.seek(lo)
            tail = f.read(self.seen - lo)
        return "same" if same_head and _sha(tail) == self.tail else "new"


class SourceRegistry:
    """The incarnations of the inputs of one state dir."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.root = Path(state_dir) / "sources"

    def _path(self, key: str) -> Path:
        return self.root / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"

    def _read(self, key: str) -> dict[str, Any]:
        try:
            data = orjson.loads(self._path(key).read_bytes())
        except FileNotFoundError:
            return {"key": key, "incarnations": []}
        if data.get("key") != key:
            raise RefusedError(f"{self._path(key)} describes {data.get('key')!r}, not {key!r}")
        return data

    def _write(self, data: dict[str, Any]) -> None:
        atomic_write(self._path(data["key"]), orjson.dumps(data, option=orjson.OPT_INDENT_2))

    def incarnations(self, key: str) -> list[dict[str, Any]]:
        """Return the recorded incarnations of input `key`, oldest first."""
        return list(self._read(key)["incarnations"])

    def resolve_file(self, path: str | os.PathLike[str], *, reset: bool = False) -> str:
        """Return the partition name to read the file at `path` under, recording it if new.

        The last incarnation is kept while the file holds the bytes read from it; a file with
        other bytes starts a new incarnation (read from its start); `reset` starts one in any
        case. Raises `RefusedError` for a file that starts with the same bytes but is shorter
        than what was read.
        """
        path = Path(path).resolve()
        key = f"file:{path}"
        data = self._read(key)
        known = data["incarnations"]
        if known and not reset:
            last = known[-1]
            verdict = FileIdentity(**{k: last[k] for k in FileIdentity.__slots__}).verdict(path)
            if verdict == "same":
                return incarnation_name(key, last["n"])
            if verdict == "truncated":
                size = os.stat(path).st_size
                raise RefusedError(
                    f"input {path} is {size} bytes, shorter than the {last['seen']} bytes "
                    "already read from it, and starts with the same bytes: it was truncated or "
                    "is being rewritten, so what was read cannot be told from what is new. "
                    "Restore the file to continue, or pass --reset-source "
                    f"{path} to read it as a new input from its start (its events are then "
                    "counted again)"
                )
        n = (known[-1]["n"] + 1) if known else 1
        known.append({"n": n, **FileIdentity.of(path, 0).to_json()})
        self._write(data)
        return incarnation_name(key, n)

    def record_read(self, partition: str, path: str | os.PathLike[str], seen: int) -> None:
        """Record that the file incarnation `partition` has been read through `seen` bytes."""
        key, _, n = partition.partition("#")
        number = int(n) if n else 1
        data = self._read(key)
        for inc in data["incarnations"]:
            if inc["n"] == number:
                if inc["seen"] >= seen:
                    return
                inc.update(FileIdentity.of(path, seen).to_json())
                self._write(data)
                return

    def resolve_stream(self, key: str, *, reset: bool = False) -> int:
        """Return the incarnation number of a message stream (``kafka:TOPIC``), 1 at first.

        `reset` starts a new incarnation: the stream is read again from its start as a new input.
        """
        data = self._read(key)
        known = data["incarnations"]
        if known and not reset:
            return int(known[-1]["n"])
        n = (known[-1]["n"] + 1) if known else 1
        known.append({"n": n})
        self._write(data)
        return n
