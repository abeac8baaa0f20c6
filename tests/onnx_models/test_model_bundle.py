from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from streamml.onnx_models import (
    FEATURE_NAMES,
    ModelRegistry,
    bundled_contract,
    bundled_model_path,
    ensure_demo_registry,
    generate_speedtests,
    read_metadata,
)

from streamml import onnx_models


def test_bundled_model_is_small_and_self_describing() -> None:
    path = bundled_model_path()
    assert path.is_file() and path.stat().st_size < 400_000
    meta = read_metadata(onnx.load(path))
    assert meta["feature_names"] == list(FEATURE_NAMES)
    assert bundled_contract().feature_names == FEATURE_NAMES
    assert meta["metrics"]["accuracy"] >= meta["metrics"]["majority_baseline"] + 0.15


def test_bundled_model_scores_unseen_data_well() -> None:
    data = generate_speedtests(3000, seed=12345)
    sess = ort.InferenceSession(str(bundled_model_path()), providers=["CPUExecutionProvider"])
    labels, _ = sess.run(None, {"features": data.X})
    majority = max(data.class_counts().values()) / len(data)
    assert np.mean(labels == data.y) >= majority + 0.15


def test_ensure_demo_registry_is_idempotent(tmp_path: Path) -> None:
    a = ensure_demo_registry(tmp_path / "reg")
    b = ensure_demo_registry(tmp_path / "reg")
    assert a == b and a.stage == "live"
    reg = ModelRegistry(tmp_path / "reg")
    assert len(reg.versions(a.name)) == 1
    assert reg.load(a.name, a.version).model_bytes == bundled_model_path().read_bytes()


def test_public_surface() -> None:
    for name in onnx_models.__all__:
        assert hasattr(onnx_models, name), name
    assert len(set(onnx_models.__all__)) == len(onnx_models.__all__)
