"""Answers of on-demand services, kept with their fetch time so fresh ones are not fetched again.

One RocksDB database per shard under ``STATE_DIR/ondemand/shard-NNN`` (the shard count is the
state directory's `StateLayout`), opened in raw mode. Keys are `keys.ondemand_key` (service, then
account); a value is ``fetched_at_ms (i64, big-endian) | payload`` (the service's answer as it
came, JSON bytes for instance).

Bounds: a service keeps one entry per account (a new answer replaces the old one), so entries are
bounded by the number of accounts times the number of services; `OnDemandStore.prune_older_than`
deletes the ones fetched before a cutoff, bounding them by age as well.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from rocksdict import AccessType, Rdict, WriteBatch, WriteOptions
from streamml.state import keys
from streamml.state.layout import StateLayout
from streamml.state.rocksdb_options import StoreTuning, _options, memory_budget, open_db
from streamml.state.rolling_store import primary_files

__all__ = ["Entry", "OnDemandReader", "OnDemandStore", "is_fresh", "values_service"]

_TIME = struct.Struct(">q")
_PRUNE_BATCH = 10_000

Entry = tuple[int, bytes]
"""A stored answer: ``(fetched_at_ms, payload)``."""


def values_service(service: str) -> str:
    """Return the name under which the values extracted from `service`'s answers are kept.

    They are stored like answers (fetch time, then the JSON of ``{expression: value}``), under
    a name no service can have, so readers need not parse an answer to read its values.
    """
    return f"{service}#values"


def is_fresh(fetched_at_ms: int, as_of_ms: int, ttl_ms: int) -> bool:
    """Return True when an answer fetched at `fetched_at_ms` is within `ttl_ms` of `as_of_ms`."""
    return as_of_ms - fetched_at_ms <= ttl_ms


def _decode(raw: bytes | None) -> Entry | None:
    if raw is None:
        return None
    return _TIME.unpack_from(raw)[0], raw[_TIME.size :]


class _Shards:
    """Lazily opened shard databases of a state directory's on-demand answers."""

    def __init__(self, state_dir: str | os.PathLike[str], layout: StateLayout | None) -> None:
        self.state_dir = Path(state_dir)
        if layout is not None:
            layout = layout.ensure(self.state_dir)
        else:
            layout = StateLayout.read(self.state_dir)
        if layout is None:
            raise FileNotFoundError(
                f"{self.state_dir} holds no state layout (no streamml-state.json); pass a "
                "StateLayout to create it or point at an existing --state-dir"
            )
        self.layout = layout
        self._dbs: dict[int, Rdict | None] = {}

    def _open(self, shard: int) -> Rdict | None:
        raise NotImplementedError

    def _db(self, shard: int) -> Rdict | None:
        if not 0 <= shard < self.layout.shards:
            raise ValueError(f"shard must be in [0, {self.layout.shards}), got {shard}")
        if shard not in self._dbs:
            self._dbs[shard] = self._open(shard)
        return self._dbs[shard]

    def shard_of(self, account: bytes) -> int:
        """Return the shard holding `account`."""
        return self.layout.shard_of(account)

    def get_many(self, shard: int, service: str, accounts: Sequence[bytes]) -> list[Entry | None]:
        """Return ``(fetched_at_ms, payload)`` or None per account of `shard` (one multi-get)."""
        db = self._db(shard)
        if db is None or not accounts:
            return [None] * len(accounts)
        prefix = keys.ondemand_prefix(service)
        return [_decode(raw) for raw in db.get([prefix + a for a in accounts])]

    def get_with_values(
        self, shard: int, service: str, accounts: Sequence[bytes]
    ) -> list[tuple[Entry | None, Entry | None]]:
        """Return each account's answer and its stored values (`values_service`), one multi-get."""
        db = self._db(shard)
        if db is None or not accounts:
            return [(None, None)] * len(accounts)
        answers = keys.ondemand_prefix(service)
        values = keys.ondemand_prefix(values_service(service))
        raw = db.get([answers + a for a in accounts] + [values + a for a in accounts])
        n = len(accounts)
        return [(_decode(raw[i]), _decode(raw[n + i])) for i in range(n)]

    def lookup(self, service: str, accounts: Sequence[bytes]) -> list[Entry | None]:
        """Return `get_many` for accounts of any shard, in order (one multi-get per shard)."""
        by_shard: dict[int, list[int]] = {}
        for i, account in enumerate(accounts):
            by_shard.setdefault(self.shard_of(account), []).append(i)
        out: list[Entry | None] = [None] * len(accounts)
        for shard, idx in by_shard.items():
            for i, entry in zip(
                idx, self.get_many(shard, service, [accounts[i] for i in idx]), strict=True
            ):
                out[i] = entry
        return out

    def databases(self) -> list[Rdict]:
        """Return the open shard databases (for their memory budget).

        The dict is copied at once: the budget may ask from another thread.
        """
        return [db for db in list(self._dbs.values()) if db is not None]

    def close(self) -> None:
        """Close every open shard."""
        for db in self._dbs.values():
            if db is not None:
                db.close()
        self._dbs.clear()


class OnDemandStore(_Shards):
    """The writer of on-demand answers: one process per shard holds a shard open for writing.

    With `layout`, the state directory is created with it (or checked against the stored one);
    without, the directory must already hold a layout.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        layout: StateLayout | None = None,
        tuning: StoreTuning | None = None,
    ) -> None:
        super().__init__(state_dir, layout)
        self._tuning = tuning or StoreTuning()
        self._write_opts = WriteOptions()
        self._budget = memory_budget(self._tuning)
        self._budget.watch(self)

    def _open(self, shard: int) -> Rdict:
        path = StateLayout.ondemand_dir(self.state_dir, shard)
        path.mkdir(parents=True, exist_ok=True)
        return open_db(path, _options(self._tuning, create=True))

    def put_many(self, shard: int, service: str, items: Iterable[tuple[bytes, int, bytes]]) -> None:
        """Store ``(account, fetched_at_ms, payload)`` items of `shard` in one atomic WriteBatch."""
        db = self._db(shard)
        assert db is not None
        prefix = keys.ondemand_prefix(service)
        wb = WriteBatch(raw_mode=True)
        for account, fetched_at_ms, payload in items:
            wb.put(prefix + account, _TIME.pack(fetched_at_ms) + payload)
        db.write(wb, self._write_opts)
        self._budget.tick()

    def prune_older_than(self, shard: int, cutoff_ms: int, service: str | None = None) -> int:
        """Delete the answers of `shard` fetched before `cutoff_ms` (of one service or all).

        Scans the shard's answers; returns how many were deleted.
        """
        db = self._db(shard)
        assert db is not None
        start = (
            keys.ondemand_prefix(service)
            if service is not None
            else bytes([keys.FORMAT_VERSION]) + keys.ONDEMAND_NS
        )
        deleted = 0
        wb = WriteBatch(raw_mode=True)
        for k, v in db.items(from_key=start):
            if not k.startswith(start):
                break
            if _TIME.unpack_from(v)[0] < cutoff_ms:
                wb.delete(k)
                deleted += 1
                if deleted % _PRUNE_BATCH == 0:
                    db.write(wb, self._write_opts)
                    wb = WriteBatch(raw_mode=True)
        db.write(wb, self._write_opts)
        return deleted


class OnDemandReader(_Shards):
    """Read-only access to the on-demand answers of a state directory, from any process.

    It never takes the writer's lock. Each shard is opened on first use and sees the writes made
    before it was opened; `refresh` reopens the shards to see newer writes. With `follow`, shards
    are opened as RocksDB secondary instances and `refresh` catches up with the writer instead
    (only the shards whose logs or manifest changed), without reopening anything.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        tuning: StoreTuning | None = None,
        follow: bool = False,
    ) -> None:
        super().__init__(state_dir, None)
        self._tuning = tuning or StoreTuning()
        self._budget = memory_budget(self._tuning)
        self._budget.watch(self)
        self.follow = follow
        self._secondary_root: Path | None = None
        self._caught_up: dict[int, tuple[tuple[str, int, int], ...]] = {}

    def _open(self, shard: int) -> Rdict | None:
        path = StateLayout.ondemand_dir(self.state_dir, shard)
        if not (path / "CURRENT").exists():
            return None
        options = _options(self._tuning, create=False)
        if not self.follow:
            return open_db(path, options, AccessType.read_only(False))
        if self._secondary_root is None:
            self._secondary_root = Path(tempfile.mkdtemp(prefix="streamml-ondemand-"))
        options.set_max_open_files(-1)
        self._caught_up[shard] = primary_files(path)
        secondary = AccessType.secondary(str(self._secondary_root / f"shard-{shard:03d}"))
        return open_db(path, options, secondary)

    def refresh(self) -> None:
        """Let later reads see the latest writes (catch up, or reopen the shards)."""
        if not self.follow:
            self.close()
            return
        for shard, db in list(self._dbs.items()):
            if db is None:
                del self._dbs[shard]
                continue
            signature = primary_files(StateLayout.ondemand_dir(self.state_dir, shard))
            if signature != self._caught_up.get(shard):
                db.try_catch_up_with_primary()
                self._caught_up[shard] = signature
        self._budget.tick()

    def close(self) -> None:
        """Close every open shard (and drop the secondary instances' files)."""
        super().close()
        self._caught_up.clear()
        if self._secondary_root is not None:
            shutil.rmtree(self._secondary_root, ignore_errors=True)
            self._secondary_root = None
