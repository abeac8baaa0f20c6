"""Training references: bins from training data, stored with a version, optional for old ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import orjson
import pytest
from streamml.onnx_models import (
    FeatureContract,
    ModelRegistry,
    bundled_contract,
    bundled_model_path,
    ensure_demo_registry,
    export,
)
from streamml.onnx_models.reference import bin_index, training_reference


def test_reference_bins_hold_the_training_shares() -> None:
    rng = np.random.default_rng(1)
    X = np.column_stack([rng.normal(size=1000), rng.integers(0, 3, 1000), np.full(1000, 7.0)])
    X[::10, 0] = np.nan
    ref = training_reference(X, ["a", "b", "c"])
    a = ref["features"]["a"]
    assert len(a["edges"]) == 9 and a["missing_share"] == pytest.approx(0.1)
    assert sum(a["shares"]) + a["missing_share"] == pytest.approx(1.0)
    assert all(s == pytest.approx(0.09, abs=0.002) for s in a["shares"])
    assert ref["features"]["b"]["edges"] == [0.0, 1.0, 2.0]  # duplicate deciles dropped
    assert ref["features"]["c"] == {"edges": [7.0], "shares": [1.0, 0.0], "missing_share": 0.0}
    edges = np.array([1.0, 2.0])
    assert bin_index(edges, np.array([0.5, 1.0, 1.5, 2.0, 3.0, np.nan])).tolist() == [
        0,
        0,
        1,
        1,
        2,
        3,
    ]


def test_exported_models_carry_their_reference(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 2)).astype(np.float32)
    y = np.where(X[:, 0] > 0, "up", "down")
    model = LogisticRegression().fit(X[:200], y[:200])
    exported = export(
        model, ["x", "z"], "tiny", X_holdout=X[200:], training_data=X[:200], out=tmp_path
    )
    contract = FeatureContract.from_names(["x", "z"], ttl_ms=1000)
    v = ModelRegistry(tmp_path / "reg").register(exported.path, contract=contract)
    assert v.training_reference == training_reference(X[:200], ["x", "z"])
    assert v.training_reference["rows"] == 200


def test_bundled_model_gets_its_reference_and_old_versions_have_none(tmp_path: Path) -> None:
    v = ensure_demo_registry(tmp_path / "reg")
    assert set(v.training_reference["features"]) == set(v.feature_names)
    old = ModelRegistry(tmp_path / "old")
    src = tmp_path / "m.onnx"
    shutil.copy(bundled_model_path(), src)
    w = old.register(src, contract=bundled_contract(), name="legacy")
    assert w.training_reference is None
    manifest = old.root / "legacy" / "versions" / w.version / "manifest.json"
    data = orjson.loads(manifest.read_bytes())
    del data["training_reference"]  # a manifest written before references existed
    manifest.write_bytes(orjson.dumps(data))
    assert old.get("legacy", w.version).training_reference is None
