"""Small metadata files written so that a kill at any instruction leaves the old or the new file.

Every small file the flows keep beside their data (layouts, ids, source identities, recovery
marks) goes through `atomic_write` (a temporary file, fsync, rename, fsync of the directory) or
`create_exclusive` (the same, but linked into place only if no file is there yet).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "create_exclusive"]


def _write_temp(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace `path` with `data` atomically and durably."""
    path = Path(path)
    tmp = _write_temp(path, data)
    os.replace(tmp, path)
    _sync_dir(path.parent)


def create_exclusive(path: str | os.PathLike[str], data: bytes) -> bool:
    """Create `path` holding `data` unless it exists; return whether this call created it.

    The file appears whole or not at all: readers never see it empty or half written.
    """
    path = Path(path)
    tmp = _write_temp(path, data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    _sync_dir(path.parent)
    return True
