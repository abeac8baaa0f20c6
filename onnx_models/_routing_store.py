"""Routing and the metadata revision of the model registry (mixed into `ModelRegistry`).

See the registry's module docstring: `stages.json` decides `live` and `shadow`, `routing.json`
holds the split and mirrors the stages, and `revision.json` at the root counts every change.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from streamml.onnx_models._files import atomic_write
from streamml.onnx_models.errors import ModelNotFoundError, RegistryError
from streamml.onnx_models.routing import ROUTING_FILE, Routing, RoutingError, normalise_split

if TYPE_CHECKING:
    from streamml.onnx_models.registry import ModelVersion

__all__ = ["RoutingStore"]

REVISION_FILE = "revision.json"


def _now() -> str:
    return datetime.now(UTC).isoformat()


class RoutingStore:
    """Routing and revision methods of `ModelRegistry`; it supplies the file and lock helpers."""

    root: Path

    def _lock(self, shared: bool = False) -> AbstractContextManager[None]:
        raise NotImplementedError

    def _name_dir(self, name: str) -> Path:
        raise NotImplementedError

    def _read_stages(self, name: str) -> dict[str, Any]:
        raise NotImplementedError

    def _write_stages(self, name: str, data: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def _check_inside(self, path: Path, what: str) -> None:
        raise NotImplementedError

    def versions(self, name: str) -> list[ModelVersion]:
        """Return the versions of `name` (implemented by the registry)."""
        raise NotImplementedError

    def revision(self) -> int:
        """Return the registry-wide metadata revision (0 before the first change).

        It increases on every register, promote and routing change; reading it costs one small
        file read, so pollers call it often and take a snapshot only when it moved.
        """
        path = self.root / REVISION_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return 0
        try:
            value = orjson.loads(raw)["revision"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise RegistryError(f"{path} is malformed: expected {{'revision': N}}") from exc
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise RegistryError(f"{path}: revision must be an integer >= 0, got {value!r}")
        return value

    @contextmanager
    def reading(self) -> Iterator[int]:
        """Hold the lock shared (writers wait, readers do not) and yield the current revision.

        Everything read inside the block belongs to that one revision. A registry directory that
        does not exist yet yields 0 and is not created.
        """
        if not self.root.is_dir():
            yield 0
            return
        with self._lock(shared=True):
            yield self.revision()

    def routing(self, name: str) -> Routing:
        """Return the routing of `name` (see the module docstring for how it is derived)."""
        if not (self._name_dir(name) / "versions").is_dir():
            raise ModelNotFoundError(f"no model named {name!r} in {self.root}")
        return self._routing_from(name, self._read_stages(name))

    def route(
        self,
        name: str,
        *,
        live: str | None = None,
        split: Mapping[str, float] | tuple[tuple[str, float], ...] | None = None,
        experiment: str | None = None,
        shadow: tuple[str, ...] | list[str] | None = None,
        clear_split: bool = False,
        actor: str | None = None,
    ) -> Routing:
        """Change the routing of `name` in one step and return the new routing.

        `live` promotes that version to live (retiring the previous one). `split` replaces the
        A/B split (weights are normalised); `experiment` renames the assignment (reassigning
        accounts), and a changed split keeps the current experiment so only the accounts whose
        share moved change version. `clear_split` removes split and experiment. `shadow` makes
        exactly these versions the shadows: listed ones move to stage `shadow`, shadows not
        listed move to `retired`. Unknown versions, weights <= 0, or a version both in the split
        and a shadow raise `RoutingError` and change nothing. No actual change, no new revision.
        """
        if clear_split and (split is not None or experiment is not None):
            raise RoutingError("clearing the split takes no split or experiment with it")
        with self._lock():
            known = {v.version for v in self.versions(name)}
            data = self._read_stages(name)
            before = self._routing_from(name, data)
            by = actor or os.environ.get("USER") or "unknown"
            now = _now()
            wanted_shadow = None if shadow is None else tuple(shadow)
            for v in (live, *(wanted_shadow or ())):
                if v is not None and v not in known:
                    raise RoutingError(
                        f"{name}: unknown version {v!r}; registered versions are {sorted(known)}"
                    )
            if live is not None and wanted_shadow is not None and live in wanted_shadow:
                raise RoutingError(f"{name}: version {live!r} cannot be both live and a shadow")
            if live is not None:
                self._move(data, live, "live", now, by)
            if wanted_shadow is not None:
                current = data["stages"]
                for v, st in list(current.items()):
                    if st == "shadow" and v not in wanted_shadow:
                        self._move(data, v, "retired", now, by)
                for v in wanted_shadow:
                    if current.get(v, "candidate") == "live":
                        raise RoutingError(
                            f"{name}: version {v!r} is live; make another version live first"
                        )
                    self._move(data, v, "shadow", now, by)
            if clear_split:
                new_split: tuple[tuple[str, float], ...] = ()
                new_experiment = None
            else:
                new_split = before.split if split is None else normalise_split(split)
                new_experiment = experiment or before.experiment
            if not new_split and experiment is not None:
                raise RoutingError(
                    f"{name}: an experiment names an A/B split but {name} has none; give --split"
                )
            self._commit(name, data, before, by, "route", new_split, new_experiment, known)
            return self._routing_from(name, data)

    def _move(self, data: dict[str, Any], version: str, stage: str, now: str, by: str) -> bool:
        stages: dict[str, str] = data["stages"]
        current = stages.get(version, "candidate")
        if current == stage:
            return False
        if stage == "live":
            for other, st in list(stages.items()):
                if st == "live" and other != version:
                    stages[other] = "retired"
                    data["history"].append(
                        {"at": now, "version": other, "from": "live", "to": "retired", "by": by}
                    )
        stages[version] = stage
        data["history"].append(
            {"at": now, "version": version, "from": current, "to": stage, "by": by}
        )
        return True

    def _routing_from(self, name: str, data: Mapping[str, Any]) -> Routing:
        stages: dict[str, str] = data["stages"]
        live = next((v for v, st in stages.items() if st == "live"), None)
        shadow = tuple(v for v, st in stages.items() if st == "shadow")
        path = self._name_dir(name) / ROUTING_FILE
        stored: dict[str, Any] = {}
        if path.exists():
            self._check_inside(path, "routing file")
            try:
                stored = orjson.loads(path.read_bytes())
            except orjson.JSONDecodeError as exc:
                raise RegistryError(f"{path} is not valid JSON: {exc}") from exc
        raw = {**stored, "live": live, "shadow": list(shadow)}
        return Routing.from_json(name, raw)

    def _commit(
        self,
        name: str,
        data: dict[str, Any],
        before: Routing,
        by: str,
        change: str,
        split: tuple[tuple[str, float], ...] | None = None,
        experiment: str | None = None,
        known: set[str] | None = None,
    ) -> None:
        stages: dict[str, str] = data["stages"]
        revision = self.revision() + 1
        after = Routing(
            name=name,
            live=next((v for v, st in stages.items() if st == "live"), None),
            experiment=before.experiment if split is None else experiment,
            split=before.split if split is None else split,
            shadow=tuple(v for v, st in stages.items() if st == "shadow"),
            revision=revision,
            updated_at=_now(),
            updated_by=by,
        )
        if known is not None:
            after.validate(known)
        stages_changed = data != self._read_stages(name)
        if not stages_changed and after.same_routes(before):
            return
        if stages_changed:
            self._write_stages(name, data)
        if not after.same_routes(before) or before.revision == 0:
            path = self._name_dir(name) / ROUTING_FILE
            atomic_write(path, orjson.dumps(after.to_json(), option=orjson.OPT_INDENT_2))
        self._bump(name, change, revision)

    def _bump(self, name: str, change: str, revision: int | None = None) -> int:
        value = self.revision() + 1 if revision is None else revision
        record = {"revision": value, "updated_at": _now(), "model": name, "change": change}
        atomic_write(self.root / REVISION_FILE, orjson.dumps(record))
        return value
