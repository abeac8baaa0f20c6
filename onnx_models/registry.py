"""A versioned, on-disk model registry with stages and safe loading.

Layout under the registry root (all metadata is JSON, nothing is ever pickled):

```
<root>/
  .lock                         advisory lock: exclusive for every write, shared for snapshots
  revision.json                 the registry's metadata revision, +1 on every change
  <name>/
    stages.json                 stage of each version + the history of stage changes
    routing.json                live version, A/B split, shadows (see `routing.py`)
    versions/<version>/
      model.onnx                the model bytes, never rewritten
      manifest.json             sha256, contract, provenance, feature names, classes
      <external data files>     only when the model stores tensors outside the .onnx file
```

Versions are immutable and content-addressed: the manifest records the sha256 of `model.onnx`
(and of each external-data file) and every load verifies it. Registering the same bytes again under
the same name returns the existing version. Stages are `candidate` (the stage of a new version),
`live`, `shadow` and `retired`; a name has at most one `live` version, and promoting another to
`live` moves the previous one to `retired`. Every write goes to a temporary file or directory and
is moved into place with `os.replace` / `os.rename`.

Routing and stages are one mechanism: `stages.json` is the single source of truth for which
version is `live` and which are `shadow`; `routing.json` adds the A/B split and its experiment and
mirrors `live` and `shadow` from the stages (both files are rewritten under the lock by every
change that touches them). `promote` therefore updates the routing, and `route --live V` /
`--shadow X` are stage changes. A routing file is not needed: without one a model routes to its
live version with no split, shadowing the versions in stage `shadow`.

Every register, promote and routing change increments the registry-wide revision in
`revision.json`, written last and atomically under the lock, so a reader notices any change by
reading one small file and takes a consistent snapshot under the shared lock (`reading()`).

Loading refuses: names or versions that are not plain identifiers (`..`, separators), files or
symlinks resolving outside the registry root, files that are not ONNX (pickles included), content
whose sha256 differs from the manifest, and external-data tensors whose location leaves the
version directory.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import onnx
import orjson
from onnx import external_data_helper
from streamml.onnx_models._files import atomic_write
from streamml.onnx_models._routing_store import REVISION_FILE, RoutingStore
from streamml.onnx_models.contract import ContractError, FeatureContract
from streamml.onnx_models.errors import ModelNotFoundError, RegistryError, UnsafeModelError
from streamml.onnx_models.model_format import INPUT_NAME, read_metadata
from streamml.onnx_models.reference import validate_reference

__all__ = [
    "DEFAULT_REGISTRY_DIR",
    "MODEL_FILE",
    "REGISTRY_ENV",
    "REVISION_FILE",
    "STAGES",
    "LoadedModel",
    "ModelNotFoundError",
    "ModelRegistry",
    "ModelVersion",
    "RegistryError",
    "Stage",
    "UnsafeModelError",
    "default_registry_dir",
    "parse_onnx_bytes",
]

Stage = Literal["candidate", "live", "shadow", "retired"]
STAGES: tuple[str, ...] = ("candidate", "live", "shadow", "retired")
"""The stages a registered version can be in."""
MODEL_FILE = "model.onnx"
"""File name of the model inside a version directory."""
REGISTRY_ENV = "STREAMML_REGISTRY"
"""Environment variable naming the registry directory."""
DEFAULT_REGISTRY_DIR = "models"
"""Registry directory used when neither a flag nor `STREAMML_REGISTRY` names one."""

_MANIFEST = "manifest.json"
_STAGES_FILE = "stages.json"
_FORMAT = 1
_IDENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_PICKLE_PREFIXES = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def default_registry_dir() -> Path:
    """Return `$STREAMML_REGISTRY` if set, else `./models`."""
    return Path(os.environ.get(REGISTRY_ENV) or DEFAULT_REGISTRY_DIR)


@dataclass(frozen=True)
class ModelVersion:
    """One registered, immutable model version and its current stage."""

    name: str
    version: str
    sha256: str
    stage: str
    path: Path
    contract: FeatureContract
    feature_names: tuple[str, ...]
    classes: tuple[str, ...]
    provenance: dict[str, Any] = field(default_factory=dict)
    external_data: dict[str, str] = field(default_factory=dict)
    training_reference: dict[str, Any] | None = None
    """Per-feature bins and training shares (`streamml.onnx_models.reference`); None when the
    version was registered without one (live drift is then unavailable)."""

    @property
    def ref(self) -> str:
        """`name@version`."""
        return f"{self.name}@{self.version}"

    @property
    def output_kind(self) -> str:
        """`classifier` (label and probabilities) or `regressor` (one value), from provenance."""
        return str(self.provenance.get("output_kind") or "classifier")

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "name": self.name,
            "version": self.version,
            "stage": self.stage,
            "sha256": self.sha256,
            "path": str(self.path),
            "feature_names": list(self.feature_names),
            "classes": list(self.classes),
            "contract": self.contract.to_json(),
            "provenance": self.provenance,
            "external_data": self.external_data,
            "training_reference": self.training_reference,
        }


@dataclass(frozen=True)
class LoadedModel:
    """Verified model bytes, ready for an ONNX Runtime session.

    When `has_external_data` is true the session must be created from `path` (ONNX Runtime
    resolves the external files beside it); otherwise create it from `model_bytes`, which are the
    exact bytes whose hash was checked.
    """

    version: ModelVersion
    model_bytes: bytes
    path: Path
    has_external_data: bool


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _check_ident(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _IDENT.match(value) or ".." in value:
        raise UnsafeModelError(
            f"invalid model {kind} {value!r}: expected letters, digits, '.', '_' or '-' (starting "
            f"with a letter or digit, no '..', no path separators, at most 128 characters)"
        )
    return value


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _parse(data: bytes, where: str) -> onnx.ModelProto:
    if data.startswith(_PICKLE_PREFIXES):
        raise UnsafeModelError(
            f"{where} is a Python pickle, not an ONNX model; pickles are never loaded. "
            f"Export the model to ONNX (streamml.onnx_models.export) and register that file"
        )
    try:
        model = onnx.load_from_string(data)
    except Exception as exc:
        raise UnsafeModelError(f"{where} is not a valid ONNX model: {exc}") from exc
    if model.ir_version <= 0 or not model.graph.input or not model.graph.output:
        raise UnsafeModelError(
            f"{where} is not an ONNX model (no IR version, graph inputs or outputs)"
        )
    return model


def _run_checker(model: onnx.ModelProto, path: Path | None, where: str) -> None:
    try:
        if path is not None:
            onnx.checker.check_model(str(path))
        else:
            onnx.checker.check_model(model)
    except Exception as exc:
        raise UnsafeModelError(f"{where} failed the ONNX checker: {exc}") from exc


def parse_onnx_bytes(data: bytes, where: str, path: Path | None = None) -> onnx.ModelProto:
    """Parse and check ONNX bytes; raise `UnsafeModelError` for anything that is not ONNX.

    External-data locations must stay inside the directory of `path` (a model with external
    data and no `path` is refused); the ONNX checker then runs against the file on disk.
    """
    model = _parse(data, where)
    locations = _external_locations(model)
    if locations and path is None:
        raise UnsafeModelError(f"{where} stores tensors in external files; load it from a path")
    for loc in locations:
        _safe_location(Path(str(path)).parent, loc, where)
    _run_checker(model, path if locations else None, where)
    return model


def _external_locations(model: onnx.ModelProto) -> list[str]:
    locations: list[str] = []
    for tensor in external_data_helper._get_all_tensors(model):
        if external_data_helper.uses_external_data(tensor):
            info = external_data_helper.ExternalDataInfo(tensor)
            if info.location not in locations:
                locations.append(info.location)
    return locations


def _inside(base: Path, candidate: Path) -> bool:
    base_real = os.path.realpath(base)
    real = os.path.realpath(candidate)
    return real == base_real or real.startswith(base_real + os.sep)


def _safe_location(base_dir: Path, location: str, where: str) -> Path:
    p = Path(location)
    if p.is_absolute() or ".." in p.parts or location.startswith(("/", "\\")) or "\\" in location:
        raise UnsafeModelError(
            f"{where}: external data location {location!r} leaves the model directory; only "
            f"relative paths inside it are allowed"
        )
    target = base_dir / p
    if not _inside(base_dir, target):
        raise UnsafeModelError(
            f"{where}: external data location {location!r} resolves outside the model directory"
        )
    return target


def _input_width(model: onnx.ModelProto) -> int | None:
    inp = model.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    if len(dims) == 2 and dims[1].HasField("dim_value"):
        return int(dims[1].dim_value)
    return None


class ModelRegistry(RoutingStore):
    """A model registry rooted at a directory (created on the first write)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"ModelRegistry({str(self.root)!r})"

    # -- paths -------------------------------------------------------------------------------

    def _name_dir(self, name: str) -> Path:
        return self.root / _check_ident("name", name)

    def _version_dir(self, name: str, version: str) -> Path:
        return self._name_dir(name) / "versions" / _check_ident("version", version)

    @contextmanager
    def _lock(self, shared: bool = False) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    # -- stages ------------------------------------------------------------------------------

    def _read_stages(self, name: str) -> dict[str, Any]:
        path = self._name_dir(name) / _STAGES_FILE
        if not path.exists():
            return {"name": name, "stages": {}, "history": []}
        self._check_inside(path, "stages file")
        try:
            data = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise RegistryError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or not isinstance(data.get("stages"), dict):
            raise RegistryError(f"{path} is malformed: expected {{'stages': {{...}}}}")
        data.setdefault("history", [])
        return data

    def _write_stages(self, name: str, data: Mapping[str, Any]) -> None:
        path = self._name_dir(name) / _STAGES_FILE
        atomic_write(path, orjson.dumps(data, option=orjson.OPT_INDENT_2))

    # -- reading -----------------------------------------------------------------------------

    def _check_inside(self, path: Path, what: str) -> None:
        if not _inside(self.root, path):
            raise UnsafeModelError(
                f"{what} {str(path)!r} resolves outside the registry {str(self.root)!r} "
                f"(symlink or path traversal); refusing to read it"
            )

    def _read_manifest(self, name: str, version: str) -> dict[str, Any]:
        vdir = self._version_dir(name, version)
        path = vdir / _MANIFEST
        if not path.exists():
            if not self._name_dir(name).exists():
                raise ModelNotFoundError(f"no model named {name!r} in {self.root}")
            raise ModelNotFoundError(
                f"model {name!r} has no version {version!r}; see `streamml models list`"
            )
        self._check_inside(vdir, "version directory")
        self._check_inside(path, "manifest")
        try:
            data = orjson.loads(path.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise RegistryError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise RegistryError(f"{path} is not a registry manifest of format {_FORMAT}")
        return data

    def _to_version(self, manifest: Mapping[str, Any], stage: str) -> ModelVersion:
        name, version = manifest["name"], manifest["version"]
        try:
            contract = FeatureContract.from_json(manifest["contract"])
        except ContractError as exc:
            raise RegistryError(f"{name}@{version}: stored contract is invalid: {exc}") from exc
        return ModelVersion(
            name=name,
            version=version,
            sha256=manifest["sha256"],
            stage=stage,
            path=self._version_dir(name, version) / manifest["file"],
            contract=contract,
            feature_names=tuple(manifest["feature_names"]),
            classes=tuple(manifest["classes"]),
            provenance=dict(manifest.get("provenance", {})),
            external_data=dict(manifest.get("external_data", {})),
            training_reference=manifest.get("training_reference"),
        )

    def names(self) -> list[str]:
        """Return the registered model names, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and _IDENT.match(p.name) and (p / "versions").is_dir()
        )

    def versions(self, name: str) -> list[ModelVersion]:
        """Return the versions of `name` in registration order."""
        vroot = self._name_dir(name) / "versions"
        if not vroot.is_dir():
            raise ModelNotFoundError(f"no model named {name!r} in {self.root}")
        stages = self._read_stages(name)["stages"]
        out = []
        for p in vroot.iterdir():
            if p.name.startswith(".") or not (p / _MANIFEST).exists():
                continue
            manifest = self._read_manifest(name, p.name)
            out.append(self._to_version(manifest, stages.get(p.name, "candidate")))
        out.sort(key=lambda v: (str(v.provenance.get("registered_at", "")), v.version))
        return out

    def list(self, name: str | None = None) -> list[ModelVersion]:
        """Return every version of `name`, or of all models when `name` is None."""
        if name is not None:
            return self.versions(name)
        return [v for n in self.names() for v in self.versions(n)]

    def get(self, name: str, version: str) -> ModelVersion:
        """Return one version's description (no model bytes read)."""
        manifest = self._read_manifest(name, version)
        stage = self._read_stages(name)["stages"].get(version, "candidate")
        return self._to_version(manifest, stage)

    def live(self, name: str) -> ModelVersion | None:
        """Return the live version of `name`, or None."""
        for v in self.versions(name):
            if v.stage == "live":
                return v
        return None

    def show(self, name: str, version: str | None = None) -> ModelVersion:
        """Return `name@version`; without a version, the live one, else the newest."""
        if version is not None:
            return self.get(name, version)
        versions = self.versions(name)
        if not versions:
            raise ModelNotFoundError(f"model {name!r} has no versions")
        live = [v for v in versions if v.stage == "live"]
        return live[0] if live else versions[-1]

    def next_version(self, name: str) -> str:
        """Return the next free integer version of `name` (`"1"` for a new name)."""
        try:
            used = [v.version for v in self.versions(name)]
        except ModelNotFoundError:
            used = []
        return str(max((int(u) for u in used if u.isdigit()), default=0) + 1)

    def history(self, name: str) -> list[dict[str, Any]]:
        """Return the stage changes of `name`, oldest first."""
        return list(self._read_stages(name)["history"])

    def load(self, name: str, version: str) -> LoadedModel:
        """Load and verify a version's model bytes (see the module docstring for the checks)."""
        manifest = self._read_manifest(name, version)
        vdir = self._version_dir(name, version)
        file = manifest.get("file")
        if (
            not isinstance(file, str)
            or not file.endswith(".onnx")
            or Path(file).name != file
            or ".." in file
        ):
            raise UnsafeModelError(
                f"{name}@{version}: manifest names model file {file!r}; expected a plain file "
                f"name ending in .onnx inside the version directory"
            )
        path = vdir / file
        where = f"{name}@{version} ({path})"
        if not _inside(self.root, path):
            raise UnsafeModelError(
                f"{where} resolves outside the registry {str(self.root)!r} (symlink or path "
                f"traversal); refusing to load"
            )
        if not path.is_file():
            raise UnsafeModelError(f"{where} is missing or not a regular file")
        data = path.read_bytes()
        found = _sha256(data)
        if found != manifest.get("sha256"):
            raise UnsafeModelError(
                f"{where}: sha256 mismatch, manifest says {manifest.get('sha256')} but the file "
                f"hashes to {found}; the file changed after registration. Re-register the model"
            )
        model = _parse(data, where)
        locations = _external_locations(model)
        recorded = manifest.get("external_data", {})
        if not isinstance(recorded, dict):
            raise UnsafeModelError(f"{where}: manifest external_data must be an object")
        for loc in locations:
            target = _safe_location(vdir, loc, where)
            if loc not in recorded:
                raise UnsafeModelError(f"{where}: external data {loc!r} is not in the manifest")
            if not target.is_file():
                raise UnsafeModelError(f"{where}: external data {loc!r} is missing")
            if _sha256(target.read_bytes()) != recorded[loc]:
                raise UnsafeModelError(f"{where}: external data {loc!r} fails its sha256 check")
        _run_checker(model, path if locations else None, where)
        stage = self._read_stages(name)["stages"].get(version, "candidate")
        return LoadedModel(
            version=self._to_version(manifest, stage),
            model_bytes=data,
            path=path,
            has_external_data=bool(locations),
        )

    def load_bytes(self, name: str, version: str) -> bytes:
        """Return the verified bytes of a model without external data."""
        loaded = self.load(name, version)
        if loaded.has_external_data:
            raise RegistryError(
                f"{name}@{version} stores tensors in external files; use load() and create the "
                f"session from its path"
            )
        return loaded.model_bytes

    # -- writing -----------------------------------------------------------------------------

    def register(
        self,
        source: str | os.PathLike[str],
        *,
        contract: FeatureContract | Mapping[str, Any],
        name: str | None = None,
        version: str | None = None,
        registered_by: str | None = None,
        lineage: Mapping[str, Any] | None = None,
        training_reference: Mapping[str, Any] | None = None,
    ) -> ModelVersion:
        """Copy an ONNX file into the registry as a new `candidate` version.

        `lineage` (JSON-ready: the training set's fingerprint, parent version, ...) is kept in
        the version's provenance. `training_reference` (see `streamml.onnx_models.reference`)
        defaults to the one in the model's metadata; a version stored without one has no live
        drift figures.

        `name` and `version` default to the model's `streamml.name` / `streamml.version`
        metadata; a version that is missing or already used by different bytes falls back to the
        next integer when not given explicitly. Registering bytes already present under `name`
        returns that version unchanged. The contract must list the model's features in order.
        """
        src = Path(source)
        if src.suffix != ".onnx":
            raise UnsafeModelError(
                f"expected an .onnx file, got {str(src)!r}; "
                "export models with streamml.onnx_models.export"
            )
        if not src.is_file():
            raise RegistryError(f"model file {str(src)!r} does not exist or is not a file")
        data = src.read_bytes()
        model = parse_onnx_bytes(data, str(src), src)
        meta = read_metadata(model)
        if not isinstance(contract, FeatureContract):
            contract = FeatureContract.from_json(contract)
        name = _check_ident("name", name or str(meta.get("name") or ""))
        feature_names = tuple(meta.get("feature_names") or contract.feature_names)
        if contract.feature_names != feature_names:
            raise ContractError(
                f"contract features {list(contract.feature_names)} do not match the model's "
                f"features {list(feature_names)} (same names, same order expected)"
            )
        width = _input_width(model)
        if width is not None and width != len(contract):
            raise ContractError(
                f"the model takes {width} inputs but the contract lists {len(contract)} features"
            )
        if model.graph.input[0].name != INPUT_NAME:
            raise RegistryError(
                f"expected the model input to be named {INPUT_NAME!r}, got "
                f"{model.graph.input[0].name!r}; export with streamml.onnx_models.export"
            )
        reference = training_reference or meta.get("training_reference")
        if reference is not None:
            try:
                reference = validate_reference(reference)
            except ValueError as exc:
                raise RegistryError(f"{src}: training reference: {exc}") from None
        classes = meta.get("classes")
        if not isinstance(classes, list):
            classes = []
        locations = _external_locations(model)
        ext_sources = {loc: _safe_location(src.parent, loc, str(src)) for loc in locations}
        for loc, p in ext_sources.items():
            if not p.is_file():
                raise RegistryError(f"{src}: external data file {loc!r} is missing")
        sha = _sha256(data)
        with self._lock():
            ndir = self._name_dir(name)
            (ndir / "versions").mkdir(parents=True, exist_ok=True)
            existing = self.versions(name)
            for v in existing:
                if v.sha256 == sha and (version is None or version == v.version):
                    return v
            used = {v.version for v in existing}
            if version is not None:
                _check_ident("version", version)
                if version in used:
                    raise RegistryError(
                        f"{name}@{version} already exists with different content; versions are "
                        f"immutable, register under a new version"
                    )
            else:
                meta_version = meta.get("version")
                if isinstance(meta_version, str) and _IDENT.match(meta_version):
                    version = meta_version if meta_version not in used else None
                if version is None:
                    ints = [int(u) for u in used if u.isdigit()]
                    version = str(max(ints, default=0) + 1)
            now = _now()
            manifest = {
                "format": _FORMAT,
                "name": name,
                "version": version,
                "file": MODEL_FILE,
                "sha256": sha,
                "size": len(data),
                "external_data": {},
                "feature_names": list(feature_names),
                "classes": [str(c) for c in classes],
                "contract": contract.to_json(),
                "training_reference": reference,
                "provenance": {
                    "training_data_sha256": meta.get("training_data_sha256"),
                    "training_rows": meta.get("training_rows"),
                    "metrics": meta.get("metrics", {}),
                    "parity": meta.get("parity"),
                    "created_at": meta.get("created_at"),
                    "created_by": meta.get("created_by"),
                    "estimator": meta.get("estimator"),
                    "output_kind": meta.get("output_kind", "classifier"),
                    "libraries": meta.get("libraries", {}),
                    "export_version": meta.get("version"),
                    "source_path": str(src.resolve()),
                    "registered_at": now,
                    "registered_by": registered_by or os.environ.get("USER") or "unknown",
                    **({"lineage": dict(lineage)} if lineage else {}),
                },
            }
            tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=ndir / "versions"))
            try:
                (tmp / MODEL_FILE).write_bytes(data)
                for loc, p in ext_sources.items():
                    dest = tmp / loc
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    blob = p.read_bytes()
                    dest.write_bytes(blob)
                    manifest["external_data"][loc] = _sha256(blob)
                (tmp / _MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
                for f in tmp.rglob("*"):
                    if f.is_file():
                        with open(f, "rb") as fh:
                            os.fsync(fh.fileno())
                os.rename(tmp, self._version_dir(name, version))
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            stages = self._read_stages(name)
            stages["stages"][version] = "candidate"
            stages["history"].append(
                {"at": now, "version": version, "from": None, "to": "candidate", "by": "register"}
            )
            self._write_stages(name, stages)
            self._bump(name, "register")
        return self.get(name, version)

    def promote(
        self, name: str, version: str, stage: str, *, actor: str | None = None
    ) -> ModelVersion:
        """Move `name@version` to `stage`; promoting to `live` retires the previous live one.

        The routing follows (its `live` and `shadow` come from the stages). Moving a version that
        is an arm of the A/B split to `shadow` is refused: clear or change the split first.
        """
        if stage not in STAGES:
            raise RegistryError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
        with self._lock():
            self._read_manifest(name, version)
            data = self._read_stages(name)
            before = self._routing_from(name, data)
            by = actor or os.environ.get("USER") or "unknown"
            if not self._move(data, version, stage, _now(), by):
                return self.get(name, version)
            self._commit(name, data, before, by, "promote")
        return self.get(name, version)

    def demote(
        self, name: str, version: str, stage: str = "retired", *, actor: str | None = None
    ) -> ModelVersion:
        """Move `name@version` out of service (to `retired` unless another stage is given)."""
        if stage == "live":
            raise RegistryError("demote cannot move a version to 'live'; use promote")
        return self.promote(name, version, stage, actor=actor)
