"""The online feature store: current feature values per account, read while the flow writes.

Values are computed at read time from the stored hour buckets, so they decay with no new events:
a read as of T sums the buckets in ``[T // bucket_ms - window + 1, T // bucket_ms]``.

`OnlineStore.get_features` reads values with their freshness: a value is *fresh* when
``as_of - updated_at <= ttl`` (the feature's TTL from its definition), *stale* otherwise, and
*missing* for an entity the store has never seen. A stale value is never reported as fresh.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
from streamml.state.definitions import FeatureDef, count_feature
from streamml.state.feature_manifest import StoredSource, read_sources
from streamml.state.feature_records import RecordLayout, read_features
from streamml.state.layout import StateLayout
from streamml.state.rolling_store import RollingStateStore, fill_records

__all__ = ["FeatureRead", "FeatureValue", "OnlineStore", "freshness", "window_value"]

Status = Literal["fresh", "stale", "missing"]


@dataclass(frozen=True, slots=True)
class FeatureValue:
    """A feature's value for one account, and the event time of its last accepted update."""

    value: int
    updated_at: int | None


_STATUS = ("missing", "fresh", "stale")
_new_tuple = tuple.__new__
"""Builds `FeatureRead`s from 4-tuples without a Python frame each (the NamedTuple's own
constructor is Python code)."""
_SCALAR_READS = 8
"""Reads of up to this many entities compute values in plain Python (numpy's per-call overhead
dominates them); larger ones are vectorised."""


class FeatureRead(NamedTuple):
    """One feature of one entity as read from the online store, with its freshness.

    `value` is None when `status` is ``"missing"``; `updated_at` is the event time (epoch ms) of
    the last accepted update; `version` is the feature's definition version.
    """

    value: int | float | None
    updated_at: int | None
    version: str
    status: Status

    def to_json(self) -> dict:
        """Return the read as a JSON-ready dict."""
        return {
            "value": self.value,
            "updated_at": self.updated_at,
            "version": self.version,
            "status": self.status,
        }


def freshness(updated_at: int | None, as_of: int, ttl_ms: int) -> Status:
    """Return ``"fresh"`` when ``as_of - updated_at <= ttl_ms``, ``"stale"`` otherwise."""
    if updated_at is None:
        return "missing"
    return "fresh" if as_of - updated_at <= ttl_ms else "stale"


def _records(template: np.ndarray, raw: list[bytes | None]) -> np.ndarray:
    """Return the raw records of `raw` (None: an entity never seen, given `template`).

    For values kept as raw record bytes (PostgreSQL); RocksDB values are decoded by the store
    with its database's codec (`RollingStateStore.load_records`). May be read-only.
    """
    if all(r is not None for r in raw):
        return np.frombuffer(b"".join(raw), dtype=template.dtype)  # type: ignore[arg-type]
    return fill_records(np.repeat(template, len(raw)), raw)


def window_value(counts, max_bucket: int, as_of_bucket: int, window: int) -> int:
    """Sum the buckets of `counts` (``counts[k]`` is bucket ``max_bucket - k``) inside the window.

    The window holds buckets ``[as_of_bucket - window + 1, as_of_bucket]``. Reads as of a bucket
    before `max_bucket` only see the buckets still retained.
    """
    if max_bucket < 0:
        return 0
    lo = max(0, max_bucket - as_of_bucket)
    hi = min(window - 1, max_bucket - as_of_bucket + window - 1)
    if hi < lo:
        return 0
    return int(counts[lo : hi + 1].sum())


_ABSENT = FeatureValue(0, None)


class OnlineStore:
    """Read-only access to the online store of a state directory, from any process.

    Each shard is opened read-only on first use and sees the writes made before it was opened;
    `refresh` reopens the shards to see newer writes. With `follow`, shards are opened as
    RocksDB secondary instances (never taking the writer's lock) and `refresh` catches them up
    with the writer instead, which costs in proportion to what was written since.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        clock=time.time,
        follow: bool = False,
        postgres_dsn: str | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.follow = follow
        self._secondary_root: Path | None = None
        layout = StateLayout.read(self.state_dir)
        if layout is None:
            raise FileNotFoundError(
                f"{self.state_dir} holds no feature state (no streamml-state.json); "
                "run `streamml run error-count --state-dir DIR ...` first"
            )
        layout.check_complete(self.state_dir)
        self.layout = layout
        self._clock = clock
        self._shards: dict[int, RollingStateStore | None] = {}
        self.sources = read_sources(self.state_dir)
        self._records = {n: RecordLayout(s.features) for n, s in self.sources.items()}
        self._templates = {n: r.empty(1) for n, r in self._records.items()}
        self._of_feature = {
            f.name: (s, i) for s in self.sources.values() for i, f in enumerate(s.features)
        }
        self._defs = {
            name: (s.features[i], s.features[i].version)
            for name, (s, i) in self._of_feature.items()
        }
        self.postgres_dsn = postgres_dsn or os.environ.get("STREAMML_POSTGRES_DSN") or None
        self._postgres: dict[str, Any] = {}
        self.definition = count_feature(layout.feature, layout.bucket_ms, layout.window_buckets)

    @property
    def feature(self) -> str:
        """Name of the error-count feature of the layout (what `get` reads)."""
        return self.layout.feature

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Names of every feature this store serves, source by source."""
        return tuple(self._of_feature)

    def definitions(self) -> dict[str, FeatureDef]:
        """Return the definition of every feature this store serves, by name."""
        return {name: s.features[i] for name, (s, i) in self._of_feature.items()}

    def _shard(self, shard: int) -> RollingStateStore | None:
        if shard not in self._shards:
            path = StateLayout.shard_dir(self.state_dir, shard)
            store = None
            if (path / "CURRENT").exists():
                secondary = None
                if self.follow:
                    if self._secondary_root is None:
                        self._secondary_root = Path(tempfile.mkdtemp(prefix="streamml-online-"))
                    secondary = self._secondary_root / f"shard-{shard:03d}"
                store = RollingStateStore(
                    path,
                    feature=self.layout.feature_id,
                    window=self.layout.window_buckets,
                    read_only=True,
                    secondary_dir=secondary,
                )
            self._shards[shard] = store
        return self._shards[shard]

    def get(self, account: str | bytes, as_of: int | None = None) -> FeatureValue:
        """Return the value of the feature for `account` as of `as_of` (epoch ms; default now)."""
        key = account.encode("utf-8") if isinstance(account, str) else account
        store = self._shard(self.layout.shard_of(key))
        record = None if store is None else store.load_one(key)
        if record is None:
            return FeatureValue(0, None)
        if as_of is None:
            as_of = int(self._clock() * 1000)
        value = window_value(
            record["counts"],
            int(record["max_bucket"]),
            as_of // self.layout.bucket_ms,
            self.layout.window_buckets,
        )
        return FeatureValue(value, int(record["updated_at"]))

    def get_many(
        self, accounts: list[str] | list[bytes], as_of: int | None = None
    ) -> list[FeatureValue]:
        """Return `get` for each account, in order."""
        if as_of is None:
            as_of = int(self._clock() * 1000)
        return self.get_batch(accounts, [as_of] * len(accounts))

    def get_batch(
        self, accounts: Sequence[str | bytes], as_of: Sequence[int]
    ) -> list[FeatureValue]:
        """Return each account's value as of its own time, with one multi-get per shard."""
        keys = [a.encode("utf-8") if isinstance(a, str) else a for a in accounts]
        by_shard: dict[int, list[int]] = {}
        for i, key in enumerate(keys):
            by_shard.setdefault(self.layout.shard_of(key), []).append(i)
        out = [_ABSENT] * len(keys)
        bucket_ms, window = self.layout.bucket_ms, self.layout.window_buckets
        for shard, idx in by_shard.items():
            store = self._shard(shard)
            if store is None:
                continue
            records = store.load([keys[i] for i in idx])
            for i, record in zip(idx, records, strict=True):
                updated = int(record["updated_at"])
                if updated < 0:
                    continue
                value = window_value(
                    record["counts"], int(record["max_bucket"]), as_of[i] // bucket_ms, window
                )
                out[i] = FeatureValue(value, updated)
        return out

    def get_features(
        self,
        entities: Sequence[str | bytes],
        features: Sequence[str] | None = None,
        as_of: int | Sequence[int] | None = None,
    ) -> list[dict[str, FeatureRead]]:
        """Read `features` (default: all) of each entity as of `as_of`, with their freshness.

        `as_of` is epoch ms, one for all entities or one per entity (default: now). Returns one
        dict per entity, in order, mapping each feature name to its `FeatureRead`. Each source's
        records are read with one multi-get per shard (or one query to PostgreSQL for features
        kept only there). Raises KeyError for a feature the store does not serve.
        """
        names = self.feature_names if features is None else tuple(features)
        for name in names:
            if name not in self._of_feature:
                known = ", ".join(self.feature_names)
                raise KeyError(f"{self.state_dir} serves no feature {name!r} (it serves: {known})")
        n = len(entities)
        if as_of is None or isinstance(as_of, int):
            at = int(self._clock() * 1000) if as_of is None else as_of
            time_list = [at] * n
        else:
            time_list = [int(t) for t in as_of]
            if len(time_list) != n:
                raise ValueError(f"{n} entities but {len(time_list)} as_of times")
        keys = [e.encode("utf-8") if isinstance(e, str) else e for e in entities]
        by_source: dict[str, list[str]] = {}
        for name in names:
            by_source.setdefault(self._of_feature[name][0].name, []).append(name)
        columns: dict[str, list[FeatureRead]] = {}
        for source, wanted in by_source.items():
            stored = self.sources[source]
            records = self._source_records(stored, wanted, keys)
            layout = self._records[source]
            if n <= _SCALAR_READS:
                self._read_few(layout, records, time_list, wanted, columns)
                continue
            times = np.asarray(time_list, dtype=np.int64)
            values = read_features(layout, records, times, wanted)
            updated = records["updated_at"]
            seen = updated >= 0
            age = times - updated
            seen_at = [u if u >= 0 else None for u in updated.tolist()]
            for name in wanted:
                f, version = self._defs[name]
                column = values[name]
                present = seen & ~np.isnan(column)
                status = np.where(present, np.where(age <= f.ttl_ms, 1, 2), 0).tolist()
                cells = (column.astype(np.int64) if f.aggregation == "count" else column).tolist()
                cells = [c if p else None for c, p in zip(cells, present.tolist(), strict=True)]
                rows = zip(cells, seen_at, repeat(version), [_STATUS[k] for k in status])
                columns[name] = list(map(_new_tuple, repeat(FeatureRead), rows))
        ordered = [columns[name] for name in names]
        return [dict(zip(names, cells, strict=True)) for cells in zip(*ordered, strict=True)]

    def _read_few(
        self,
        layout: RecordLayout,
        records: np.ndarray,
        times: list[int],
        wanted: list[str],
        columns: dict[str, list[FeatureRead]],
    ) -> None:
        """Read a few entities' features in plain Python (see `_SCALAR_READS`)."""
        plan = layout.read_plan
        at = layout.dtype.names.index("updated_at")
        for name in wanted:
            columns[name] = []
        for row, t in zip(records.tolist(), times, strict=True):
            values = plan.read_one(row, t)
            u = row[at]
            for name in wanted:
                f, version = self._defs[name]
                v = values[name]
                if u < 0:
                    read = FeatureRead(None, None, version, "missing")
                elif v != v:
                    read = FeatureRead(None, u, version, "missing")
                else:
                    status = "fresh" if t - u <= f.ttl_ms else "stale"
                    read = FeatureRead(
                        int(v) if f.aggregation == "count" else v, u, version, status
                    )
                columns[name].append(read)

    def _source_records(self, stored: StoredSource, wanted: list[str], keys: list[bytes]):
        """Return `stored`'s records of `keys`: from RocksDB, or PostgreSQL if only kept there."""
        template = self._templates[stored.name]
        in_rocksdb = any(
            "rocksdb" in stored.features[self._of_feature[n][1]].online for n in wanted
        )
        if not in_rocksdb:
            return self._postgres_records(stored, template, keys)
        n = len(keys)
        of = [self.layout.shard_of(key) for key in keys]
        by_shard: dict[int, list[int]] = {}
        for i, shard in enumerate(of):
            by_shard.setdefault(shard, []).append(i)
        records = np.repeat(template, n)
        for shard, idx in by_shard.items():
            store = self._shard(shard)
            if store is not None:
                got, _found = store.load_records(stored.id, [keys[i] for i in idx], template)
                records[np.asarray(idx)] = got
        return records

    def _postgres_records(self, stored: StoredSource, template: np.ndarray, keys: list[bytes]):
        if self.postgres_dsn is None:
            names = [f.name for f in stored.features if "rocksdb" not in f.online]
            raise KeyError(
                f"features {', '.join(names)} are kept in PostgreSQL only: give the store a DSN "
                "(postgres_dsn=..., --postgres-dsn or STREAMML_POSTGRES_DSN)"
            )
        pg = self._postgres.get(stored.name)
        if pg is None:
            from streamml.state.postgres import PostgresStore

            pg = self._postgres[stored.name] = PostgresStore(self.postgres_dsn, stored.name)
        return _records(template, pg.load(keys))

    def refresh(self) -> None:
        """Let later reads see the latest writes (catch up, or reopen the shards)."""
        if not self.follow:
            self.close()
            return
        for shard, store in list(self._shards.items()):
            if store is None:
                del self._shards[shard]
            else:
                store.catch_up()

    def close(self) -> None:
        """Close every open shard and PostgreSQL connection."""
        for store in self._shards.values():
            if store is not None:
                store.close()
        self._shards.clear()
        for pg in self._postgres.values():
            pg.close()
        self._postgres.clear()
        if self._secondary_root is not None:
            shutil.rmtree(self._secondary_root, ignore_errors=True)
            self._secondary_root = None
