"""The model registry as a stream: immutable `ModelMetadata` snapshots pushed into a running flow.

`MetadataSource` is a Bytewax `DynamicSource`: every worker gets its own partition, so every
worker sees every snapshot without an exchange. A partition emits a full snapshot when it starts
and then whenever the registry's metadata revision changes. Checking costs one read of the small
`revision.json` every `poll_interval_s`; the snapshot is built only on change, under the
registry's shared lock, so it is never a half-written state.

Typical use in a flow: merge the metadata stream with the requests and keep the newest snapshot
in the per-worker logic of a stateless step (no key, so metadata and requests stay on the worker
that read them)::

    meta = op.input("meta", flow, MetadataSource(registry_dir))
    reqs = op.input("reqs", flow, requests_source)
    both = op.merge("both", meta, reqs)
    selected = op.flat_map_batch("select", both, selector.on_batch)

where `selector.on_batch` remembers the last `ModelMetadata` it saw and answers each request
with `metadata.select(model, account)` (requests arriving before the first snapshot wait for it).
There is no resume state: after a restart the partition emits the current snapshot again.
Non-stream callers (the REST service) use `load_metadata`. `WithMetadata` wraps a partitioned
input so each of its partitions carries the snapshots in its own batches: the metadata then
ends with a bounded input, which the prediction flow needs to finish.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bytewax.inputs import (
    DynamicSource,
    FixedPartitionedSource,
    StatefulSourcePartition,
    StatelessSourcePartition,
)
from streamml.onnx_models import (
    FeatureContract,
    ModelRegistry,
    RegistryError,
    Routing,
    Selection,
    select_variants,
)

__all__ = [
    "MetadataSource",
    "ModelEntry",
    "ModelMetadata",
    "VersionInfo",
    "WithMetadata",
    "load_metadata",
]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionInfo:
    """What a flow needs of one model version to assemble features and score it."""

    name: str
    version: str
    sha256: str
    stage: str
    contract: FeatureContract
    feature_names: tuple[str, ...]
    classes: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "version": self.version,
            "sha256": self.sha256,
            "stage": self.stage,
            "feature_names": list(self.feature_names),
            "classes": list(self.classes),
            "contract": self.contract.to_json(),
        }


@dataclass(frozen=True)
class ModelEntry:
    """One model: its routing and every version the routing references.

    `problems` names referenced versions that could not be read (deleted or unsafe); they are
    absent from `versions`, so scoring them fails per request rather than stopping the flow.
    """

    routing: Routing
    versions: tuple[VersionInfo, ...]
    problems: tuple[str, ...] = ()
    _index: dict[str, VersionInfo] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {v.version: v for v in self.versions})

    @property
    def name(self) -> str:
        """The model name."""
        return self.routing.name

    def version(self, version: str) -> VersionInfo | None:
        """Return the referenced `version`, or None when the routing does not use it."""
        return self._index.get(version)


@dataclass(frozen=True)
class ModelMetadata:
    """An immutable snapshot of every model's routing at one registry `revision`."""

    revision: int
    models: tuple[ModelEntry, ...] = ()
    _index: dict[str, ModelEntry] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {m.name: m for m in self.models})

    def names(self) -> tuple[str, ...]:
        """Return the model names, sorted."""
        return tuple(sorted(self._index))

    def model(self, name: str) -> ModelEntry | None:
        """Return the entry of model `name`, or None when the registry has no such model."""
        return self._index.get(name)

    def select(self, model: str, account: str) -> Selection | None:
        """Pick the versions to score for `account` (see `select_variants`); None: no model."""
        entry = self._index.get(model)
        return None if entry is None else select_variants(entry.routing, account)

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "revision": self.revision,
            "models": {
                m.name: {
                    "routing": m.routing.to_json(),
                    "versions": {v.version: v.to_json() for v in m.versions},
                    "problems": list(m.problems),
                }
                for m in self.models
            },
        }


def _entry(registry: ModelRegistry, name: str) -> ModelEntry:
    try:
        routing = registry.routing(name)
    except RegistryError as exc:
        return ModelEntry(Routing(name), (), (f"routing unreadable: {exc}",))
    versions, problems = [], []
    for v in routing.referenced():
        try:
            mv = registry.get(name, v)
        except RegistryError as exc:
            problems.append(f"{name}@{v}: {exc}")
            continue
        versions.append(
            VersionInfo(
                mv.name, mv.version, mv.sha256, mv.stage, mv.contract, mv.feature_names, mv.classes
            )
        )
    return ModelEntry(routing, tuple(versions), tuple(problems))


def load_metadata(registry: ModelRegistry | str | os.PathLike[str]) -> ModelMetadata:
    """Return the registry's current `ModelMetadata`, read under its shared lock."""
    if not isinstance(registry, ModelRegistry):
        registry = ModelRegistry(registry)
    with registry.reading() as revision:
        return ModelMetadata(revision, tuple(_entry(registry, n) for n in registry.names()))


class _RegistryPoller:
    """Read the registry's revision at most every `interval_s`; a new snapshot when it moved."""

    def __init__(self, registry: ModelRegistry, interval_s: float) -> None:
        self.registry = registry
        self.interval = timedelta(seconds=interval_s)
        self.due = datetime.now(UTC)
        self._last: int | None = None
        self._error: str | None = None

    def poll(self) -> list[ModelMetadata]:
        """Return ``[snapshot]`` when due and changed (or first), else ``[]``; never raises."""
        now = datetime.now(UTC)
        if now < self.due:
            return []
        self.due = now + self.interval
        try:
            if self._last is not None and self.registry.revision() == self._last:
                return []
            snapshot = load_metadata(self.registry)
        except (RegistryError, OSError) as exc:
            if str(exc) != self._error:
                _log.warning("model metadata not refreshed, retrying: %s", exc)
                self._error = str(exc)
            return []
        self._error = None
        self._last = snapshot.revision
        return [snapshot]


class _MetadataPartition(StatelessSourcePartition[ModelMetadata]):
    def __init__(
        self, registry: ModelRegistry, interval_s: float, until: Callable[[], bool] | None
    ) -> None:
        self._poller = _RegistryPoller(registry, interval_s)
        self._until = until

    def next_batch(self) -> list[ModelMetadata]:
        if self._until is not None and self._until():
            raise StopIteration
        return self._poller.poll()

    def next_awake(self) -> datetime | None:
        return self._poller.due


class MetadataSource(DynamicSource[ModelMetadata]):
    """Emit a `ModelMetadata` snapshot on every worker at start and on every registry change.

    `poll_interval_s` is how often the revision file is checked. `until`, when given, ends the
    stream (and so lets a bounded flow finish) once it returns true; it is checked every poll.
    Unreadable registry files are logged and retried; the last good snapshot stays in force.
    """

    def __init__(
        self,
        registry_dir: str | os.PathLike[str],
        poll_interval_s: float = 0.2,
        *,
        until: Callable[[], bool] | None = None,
    ) -> None:
        if not poll_interval_s > 0:
            raise ValueError(f"poll_interval_s must be > 0 seconds, got {poll_interval_s!r}")
        self.registry_dir = Path(registry_dir)
        self.poll_interval_s = poll_interval_s
        self.until = until

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSourcePartition[ModelMetadata]:
        """Build this worker's partition (each worker polls the registry on its own)."""
        return _MetadataPartition(
            ModelRegistry(self.registry_dir), self.poll_interval_s, self.until
        )


class _WithMetadataPartition(StatefulSourcePartition[Any, Any]):
    def __init__(self, inner: StatefulSourcePartition, registry: ModelRegistry, interval_s: float):
        self._inner = inner
        self._poller = _RegistryPoller(registry, interval_s)

    def next_batch(self) -> list[Any]:
        meta = self._poller.poll()
        batch = self._inner.next_batch()
        return [*meta, *batch] if meta else batch

    def next_awake(self) -> datetime | None:
        inner = self._inner.next_awake()
        if inner is None:
            return None
        return min(inner, self._poller.due)

    def snapshot(self) -> Any:
        return self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()


class WithMetadata(FixedPartitionedSource[Any, Any]):
    """Interleave `ModelMetadata` snapshots into the batches of every partition of `source`.

    Each partition emits a snapshot before its first items and then whenever the registry's
    revision changed (checked at most every `poll_interval_s`), so the metadata stream lives
    exactly as long as the input: a bounded input ends its flow. Positions and resume states
    are the inner source's own.
    """

    def __init__(
        self,
        source: FixedPartitionedSource[Any, Any],
        registry_dir: str | os.PathLike[str],
        poll_interval_s: float = 0.2,
    ) -> None:
        if not poll_interval_s > 0:
            raise ValueError(f"poll_interval_s must be > 0 seconds, got {poll_interval_s!r}")
        self.source = source
        self.registry_dir = Path(registry_dir)
        self.poll_interval_s = poll_interval_s

    def list_parts(self) -> list[str]:
        """Return the inner source's partitions."""
        return self.source.list_parts()

    def build_part(
        self, step_id: str, for_part: str, resume_state: Any
    ) -> StatefulSourcePartition[Any, Any]:
        """Build the inner partition and wrap it."""
        inner = self.source.build_part(step_id, for_part, resume_state)
        return _WithMetadataPartition(inner, ModelRegistry(self.registry_dir), self.poll_interval_s)
