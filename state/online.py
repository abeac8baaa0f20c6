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
from pathlib import Path
from typing import Literal

from streamml.state.definitions import FeatureDef, SourceDef, default_definitions
from streamml.state.layout import StateLayout
from streamml.state.rolling_store import RollingStateStore
from streamml.state.sharding import shard_of

__all__ = ["FeatureRead", "FeatureValue", "OnlineStore", "freshness", "window_value"]

Status = Literal["fresh", "stale", "missing"]


@dataclass(frozen=True, slots=True)
class FeatureValue:
    """A feature's value for one account, and the event time of its last accepted update."""

    value: int
    updated_at: int | None


@dataclass(frozen=True, slots=True)
class FeatureRead:
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


def _layout_feature(layout: StateLayout) -> FeatureDef:
    """Return the definition of the feature a state dir's layout was created for.

    The bundled definition of the same name when its bucket and window agree with the layout,
    else a count over the layout's window (with the bundled TTL, or 5 minutes).
    """
    bundled = default_definitions().features.get(layout.feature)
    if (
        bundled is not None
        and bundled.aggregation == "count"
        and bundled.bucket_ms == layout.bucket_ms
        and bundled.window_buckets == layout.window_buckets
    ):
        return bundled
    source = SourceDef(layout.feature, "file", "jsonl", "account", "account", "ts")
    return FeatureDef(
        name=layout.feature,
        source=source,
        aggregation="count",
        bucket_ms=layout.bucket_ms,
        window_ms=layout.window_ms,
        ttl_ms=bundled.ttl_ms if bundled is not None else 300_000,
    )


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
        self, state_dir: str | os.PathLike[str], *, clock=time.time, follow: bool = False
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
        self.definition = _layout_feature(layout)

    @property
    def feature(self) -> str:
        """Name of the feature this store serves."""
        return self.layout.feature

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Names of every feature this store serves."""
        return (self.layout.feature,)

    def definitions(self) -> dict[str, FeatureDef]:
        """Return the definition of every feature this store serves, by name."""
        return {self.definition.name: self.definition}

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
        store = self._shard(shard_of(key, self.layout.shards))
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
            by_shard.setdefault(shard_of(key, self.layout.shards), []).append(i)
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
        dict per entity, in order, mapping each feature name to its `FeatureRead`. One multi-get
        per shard reads every entity. Raises KeyError for a feature the store does not serve.
        """
        names = self.feature_names if features is None else tuple(features)
        served = self.definitions()
        for name in names:
            if name not in served:
                known = ", ".join(self.feature_names)
                raise KeyError(f"{self.state_dir} serves no feature {name!r} (it serves: {known})")
        if as_of is None or isinstance(as_of, int):
            times = [int(self._clock() * 1000) if as_of is None else as_of] * len(entities)
        else:
            times = [int(t) for t in as_of]
            if len(times) != len(entities):
                raise ValueError(f"{len(entities)} entities but {len(times)} as_of times")
        values = self.get_batch(entities, times)
        definition = self.definition
        out: list[dict[str, FeatureRead]] = []
        for fv, t in zip(values, times, strict=True):
            status = freshness(fv.updated_at, t, definition.ttl_ms)
            value = None if status == "missing" else fv.value
            read = FeatureRead(value, fv.updated_at, definition.version, status)
            out.append({name: read for name in names})
        return out

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
        """Close every open shard."""
        for store in self._shards.values():
            if store is not None:
                store.close()
        self._shards.clear()
        if self._secondary_root is not None:
            shutil.rmtree(self._secondary_root, ignore_errors=True)
            self._secondary_root = None
