"""Which sources and feature versions a state directory holds (``streamml-features.json``).

Each source's features live in one record per entity under the source's id (see
`streamml.state.feature_records.RecordLayout`). The manifest keeps, per source, its id, its
definition and its features (in record order, with their versions), so readers know how to decode
records without the definition file, and writers refuse definitions that would reinterpret stored
state: a changed version, or features added, removed or reordered on a source that has state.
Changes that leave the values alone (TTL, alert, stores, descriptions) are taken.

A state dir without a manifest was made by `streamml run error-count`: it holds the layout's
count (`StateLayout.feature`) under the layout's feature id.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
from streamml.state.definitions import FeatureDef, SourceDef, count_feature
from streamml.state.errors import RefusedError
from streamml.state.files import atomic_write
from streamml.state.layout import StateLayout

__all__ = [
    "MANIFEST_FILE",
    "DefinitionChangedError",
    "StoredSource",
    "read_sources",
    "register_sources",
]

MANIFEST_FILE = "streamml-features.json"
_FORMAT = 1


class DefinitionChangedError(RefusedError, ValueError):
    """Definitions that would reinterpret the state a state directory holds."""


@dataclass(frozen=True)
class StoredSource:
    """One source of a state dir: its record id, definition and features in record order."""

    name: str
    id: int
    source: SourceDef
    features: tuple[FeatureDef, ...]

    def to_json(self) -> dict[str, Any]:
        """Return the manifest entry."""
        return {
            "id": self.id,
            "source": {**asdict(self.source), "filters": _lists(self.source.filters)},
            "features": [_feature_json(f) for f in self.features],
        }

    @classmethod
    def from_json(cls, name: str, body: Mapping[str, Any]) -> StoredSource:
        """Rebuild an entry written by `to_json`."""
        raw = dict(body["source"])
        raw["filters"] = {k: tuple(v) for k, v in raw.get("filters", {}).items()}
        source = SourceDef(**raw)
        features = []
        for f in body["features"]:
            f = dict(f)
            f.pop("version", None)
            f["online"] = tuple(f["online"])
            features.append(FeatureDef(source=source, **f))
        return cls(name, int(body["id"]), source, tuple(features))


def _lists(filters: Mapping[str, tuple]) -> dict[str, list]:
    return {k: list(v) for k, v in filters.items()}


def _feature_json(f: FeatureDef) -> dict[str, Any]:
    body = {k: v for k, v in asdict(f).items() if k != "source"}
    body["online"] = list(f.online)
    body["version"] = f.version
    return body


def _path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / MANIFEST_FILE


def read_sources(state_dir: str | os.PathLike[str]) -> dict[str, StoredSource]:
    """Return every source the state dir holds, by name.

    A state dir without a manifest holds the error count of its layout, as source
    ``signal_errors``; one without a layout holds nothing.
    """
    path = _path(state_dir)
    if path.exists():
        data = orjson.loads(path.read_bytes())
        return {n: StoredSource.from_json(n, b) for n, b in data["sources"].items()}
    layout = StateLayout.read(state_dir)
    if layout is None:
        return {}
    feature = count_feature(layout.feature, layout.bucket_ms, layout.window_buckets)
    return {
        "signal_errors": StoredSource(
            "signal_errors", layout.feature_id, feature.source, (feature,)
        )
    }


def _applied(state_dir: Path) -> bool:
    """Whether a state dir without a manifest holds applied input (an error count's state)."""
    from streamml.state.rolling_store import stored_positions

    layout = StateLayout.read(state_dir)
    if layout is None:
        return False
    return any(p >= 0 for p in stored_positions(state_dir, layout.shards).values())


def _describe(features: tuple[FeatureDef, ...]) -> str:
    return ", ".join(f"{f.name}@{f.version}" for f in features) or "none"


def register_sources(
    state_dir: str | os.PathLike[str],
    sources: Mapping[str, tuple[FeatureDef, ...]],
    *,
    ids: Mapping[str, int] | None = None,
    has_state: Mapping[str, bool] | None = None,
) -> dict[str, StoredSource]:
    """Record `sources` (name -> features in record order) in the manifest, or refuse them.

    A source already recorded must have the same features with the same versions in the same
    order, unless `has_state[name]` is False (nothing of it was applied yet). A new source gets
    the id in `ids`, or the next free one. Raises `DefinitionChangedError` before writing.
    """
    root = Path(state_dir)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".features.lock", "wb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stored = read_sources(root)
        if not _path(root).exists() and not _applied(root):
            stored = {}
        out = dict(stored)
        for name, features in sources.items():
            if not features:
                raise ValueError(f"source {name!r} has no features")
            old = stored.get(name)
            if old is not None:
                before = [(f.name, f.version) for f in old.features]
                after = [(f.name, f.version) for f in features]
                if before != after and (has_state or {}).get(name, True):
                    raise DefinitionChangedError(_changed(root, name, old.features, features))
                out[name] = StoredSource(name, old.id, features[0].source, tuple(features))
                continue
            used = {s.id for s in out.values()}
            wanted = (ids or {}).get(name)
            if wanted is None or wanted in used:
                wanted = max(used | {1}) + 1
            out[name] = StoredSource(name, wanted, features[0].source, tuple(features))
        body = {"format": _FORMAT, "sources": {n: s.to_json() for n, s in out.items()}}
        atomic_write(root / MANIFEST_FILE, orjson.dumps(body, option=orjson.OPT_INDENT_2) + b"\n")
        return out


def _changed(root: Path, name: str, old: tuple[FeatureDef, ...], new: tuple[FeatureDef, ...]):
    olds = {f.name: f for f in old}
    news = {f.name: f for f in new}
    details = []
    for n in news:
        if n in olds and olds[n].version != news[n].version:
            a, b = olds[n].identity(), news[n].identity()
            diff = ", ".join(f"{k} {a[k]!r} -> {b[k]!r}" for k in a if a[k] != b[k])
            details.append(f"{n}: version {olds[n].version} -> {news[n].version} ({diff})")
    added = [n for n in news if n not in olds]
    removed = [n for n in olds if n not in news]
    if added:
        details.append(f"added {', '.join(added)}")
    if removed:
        details.append(f"removed {', '.join(removed)}")
    if not details:
        details.append("the features are in another order")
    return (
        f"state dir {root} holds source {name!r} with features {_describe(old)}; the definitions "
        f"change them ({'; '.join(details)}), which would reinterpret the stored state. Compute "
        "the new definitions into a new state dir: `streamml features backfill --definitions "
        "FILE --input FILES... --state-dir NEW_DIR` (then run the flow on NEW_DIR), or restore "
        "the definitions this state dir was made with (`streamml features show --state-dir "
        f"{root}` lists them)"
    )
