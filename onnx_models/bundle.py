"""The demo triage model shipped in `onnx_models/bundled/`, and seeding a registry from it.

`python -m streamml.onnx_models.bundle` rebuilds the bundled files deterministically (fixed
data seed, model seed and creation time): `speedtest-triage.onnx` (50 trees of depth 3 per
class), `speedtest-triage.contract.json` and `speedtest-triage.reference.json` (the training
reference live drift is measured against, see `streamml.onnx_models.reference`). With
`--contract-only` it rewrites only the contract (from `triage_contract()`), with
`--reference-only` only the reference (from the same training rows), leaving the model's bytes as
they are.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from streamml.onnx_models.contract import FeatureContract
from streamml.onnx_models.data import FEATURE_NAMES
from streamml.onnx_models.reference import training_reference
from streamml.onnx_models.registry import ModelRegistry, ModelVersion
from streamml.onnx_models.training import (
    TRIAGE_MODEL_NAME,
    train_and_export,
    triage_contract,
    triage_split,
)

__all__ = [
    "BUNDLED_DIR",
    "BUNDLED_VERSION",
    "build_bundled",
    "bundled_contract",
    "bundled_contract_path",
    "bundled_model_path",
    "bundled_reference",
    "bundled_reference_path",
    "ensure_demo_registry",
    "main",
    "write_bundled_contract",
    "write_bundled_reference",
]

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
"""Directory holding the bundled demo model and its contract."""
BUNDLED_VERSION = "1"
"""Version of the bundled demo model."""

_ROWS = 20_000
_SEED = 7
_CREATED_AT = datetime(2025, 1, 1, tzinfo=UTC)


def bundled_model_path() -> Path:
    """Return the path of the bundled triage ONNX model."""
    return BUNDLED_DIR / f"{TRIAGE_MODEL_NAME}.onnx"


def bundled_contract_path() -> Path:
    """Return the path of the bundled model's feature-contract JSON."""
    return BUNDLED_DIR / f"{TRIAGE_MODEL_NAME}.contract.json"


def bundled_contract() -> FeatureContract:
    """Return the bundled model's feature contract."""
    return FeatureContract.from_json(orjson.loads(bundled_contract_path().read_bytes()))


def bundled_reference_path() -> Path:
    """Return the path of the bundled model's training-reference JSON."""
    return BUNDLED_DIR / f"{TRIAGE_MODEL_NAME}.reference.json"


def bundled_reference() -> dict[str, Any] | None:
    """Return the bundled model's training reference (None if the file is absent)."""
    path = bundled_reference_path()
    return orjson.loads(path.read_bytes()) if path.is_file() else None


def write_bundled_reference(out_dir: str | os.PathLike[str] = BUNDLED_DIR) -> Path:
    """Write the training reference of the bundled model's training rows; return its path."""
    data, train, _ = triage_split(_ROWS, _SEED)
    reference = training_reference(data.X[train], FEATURE_NAMES)
    path = Path(out_dir) / f"{TRIAGE_MODEL_NAME}.reference.json"
    path.write_bytes(orjson.dumps(reference, option=orjson.OPT_INDENT_2) + b"\n")
    return path


def write_bundled_contract(out_dir: str | os.PathLike[str] = BUNDLED_DIR) -> Path:
    """Write `triage_contract()` as the bundled contract JSON into `out_dir`; return its path."""
    path = Path(out_dir) / f"{TRIAGE_MODEL_NAME}.contract.json"
    path.write_bytes(orjson.dumps(triage_contract().to_json(), option=orjson.OPT_INDENT_2) + b"\n")
    return path


def build_bundled(out_dir: str | os.PathLike[str] = BUNDLED_DIR) -> Path:
    """Train and export the demo model and its contract into `out_dir`; return the model path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trained, exported = train_and_export(
        out / f"{TRIAGE_MODEL_NAME}.onnx",
        name=TRIAGE_MODEL_NAME,
        version=BUNDLED_VERSION,
        rows=_ROWS,
        seed=_SEED,
        created_at=_CREATED_AT,
        created_by="streamml.onnx_models.bundle",
    )
    write_bundled_contract(out)
    write_bundled_reference(out)
    print(
        f"wrote {exported.path} ({exported.path.stat().st_size} bytes, sha256 "
        f"{exported.sha256[:12]}), accuracy {trained.metrics['accuracy']:.3f} vs majority "
        f"{trained.metrics['majority_baseline']:.3f}"
    )
    return exported.path


def ensure_demo_registry(
    registry_dir: str | os.PathLike[str], *, stage: str = "live"
) -> ModelVersion:
    """Register the bundled model in `registry_dir` (if absent) and put it in `stage`.

    Idempotent: calling it again returns the same version. Works offline.
    """
    registry = ModelRegistry(registry_dir)
    version = registry.register(
        bundled_model_path(),
        contract=bundled_contract(),
        name=TRIAGE_MODEL_NAME,
        registered_by="streamml.onnx_models.bundle",
        training_reference=bundled_reference(),
    )
    if version.stage != stage:
        version = registry.promote(
            version.name, version.version, stage, actor="streamml.onnx_models.bundle"
        )
    return version


def main(argv: Sequence[str] | None = None) -> int:
    """Rebuild the bundled model, contract and reference in place (or only the JSON files)."""
    parser = argparse.ArgumentParser(
        prog="python -m streamml.onnx_models.bundle",
        description="Rebuild the bundled speed-test triage model and its feature contract.",
    )
    parser.add_argument(
        "--contract-only",
        action="store_true",
        help="rewrite only the contract JSON; keep the bundled .onnx bytes as they are",
    )
    parser.add_argument(
        "--reference-only",
        action="store_true",
        help="rewrite only the training-reference JSON; keep the .onnx bytes as they are",
    )
    args = parser.parse_args(argv)
    if args.contract_only or args.reference_only:
        if args.contract_only:
            print(f"wrote {write_bundled_contract()}")
        if args.reference_only:
            print(f"wrote {write_bundled_reference()}")
    else:
        build_bundled()
    return 0


if __name__ == "__main__":
    sys.exit(main())
