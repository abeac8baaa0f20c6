from __future__ import annotations

import hashlib
import importlib
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from streamml.onnx_models import (
    FEATURE_NAMES,
    ExportedModel,
    ExportError,
    ParityError,
    TrainedTriage,
    export,
    fingerprint,
    read_metadata,
)

PINNED = datetime(2025, 1, 1, tzinfo=UTC)
export_mod = importlib.import_module("streamml.onnx_models.exporter")


def test_export_writes_checked_model_with_metadata(
    exported: ExportedModel, trained: TrainedTriage
) -> None:
    data = exported.path.read_bytes()
    assert exported.sha256 == hashlib.sha256(data).hexdigest()
    assert exported.parity.passed
    assert exported.parity.rows == len(trained.X_holdout)
    assert exported.parity.label_agreement >= 0.999
    assert exported.parity.probability_tolerance == 1e-3  # tree model
    model = onnx.load_from_string(data)
    meta = read_metadata(model)
    assert meta["name"] == "speedtest-triage"
    assert meta["version"] == "7"
    assert meta["feature_names"] == list(FEATURE_NAMES)
    assert meta["feature_types"] == ["float32"] * len(FEATURE_NAMES)
    assert meta["classes"] == ["modem", "network", "wifi"]
    assert meta["training_data_sha256"] == fingerprint(trained.X_train)
    assert meta["metrics"]["accuracy"] == pytest.approx(trained.metrics["accuracy"])
    created = datetime.fromisoformat(meta["created_at"])
    assert created.tzinfo is not None and created == PINNED
    assert {"numpy", "scikit-learn", "skl2onnx", "onnx", "onnxruntime"} <= set(meta["libraries"])
    inp = model.graph.input[0]
    assert inp.name == "features"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [o.name for o in model.graph.output] == ["label", "probabilities"]


def test_onnx_matches_native_on_fresh_rows(exported: ExportedModel, trained: TrainedTriage) -> None:
    sess = ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])
    X = trained.X_holdout[:300]
    labels, probs = sess.run(None, {"features": X})
    assert list(labels) == list(trained.model.predict(X))
    np.testing.assert_allclose(probs, trained.model.predict_proba(X), atol=1e-3)


def test_linear_pipeline_uses_tight_tolerance(trained: TrainedTriage, tmp_path: Path) -> None:
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300))
    pipe.fit(trained.X_train, trained.y_train)
    out = export(
        pipe, FEATURE_NAMES, "lin", X_holdout=trained.X_holdout, out=tmp_path, created_at=PINNED
    )
    assert out.parity.probability_tolerance == 1e-4
    assert out.parity.max_probability_diff <= 1e-4
    assert out.path == tmp_path / f"lin-{out.version}.onnx"
    assert out.version == "20250101T000000Z"


def test_fingerprint_distinguishes_shape_and_bytes() -> None:
    a = np.arange(6, dtype=np.float32)
    assert fingerprint(a) == fingerprint(a.copy())
    assert fingerprint(a) != fingerprint(a.reshape(2, 3))
    b = a.copy()
    b[0] = 0.5
    assert fingerprint(a) != fingerprint(b)


def test_same_inputs_give_same_bytes(trained: TrainedTriage, tmp_path: Path) -> None:
    paths = []
    for i in range(2):
        out = export(
            trained.model,
            FEATURE_NAMES,
            "m",
            X_holdout=trained.X_holdout[:100],
            version="1",
            out=tmp_path / f"{i}.onnx",
            created_at=PINNED,
        )
        paths.append(out.path)
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_zero_tolerance_parity_failure_is_refused(trained: TrainedTriage, tmp_path: Path) -> None:
    target = tmp_path / "never.onnx"
    with pytest.raises(ParityError, match="parity check failed") as info:
        export(
            trained.model,
            FEATURE_NAMES,
            "m",
            X_holdout=trained.X_holdout,
            out=target,
            probability_tolerance=0.0,
            created_at=PINNED,
        )
    assert info.value.report.max_probability_diff > 0.0
    assert not info.value.report.passed
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_label_disagreement_is_refused(
    trained: TrainedTriage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = export_mod._onnx_predict

    def flipped(model_bytes: bytes, X32: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        labels, probs = real(model_bytes, X32)
        labels = labels.copy()
        labels[:5] = np.where(labels[:5] == "wifi", "modem", "wifi")
        return labels, probs

    monkeypatch.setattr(export_mod, "_onnx_predict", flipped)
    with pytest.raises(ParityError, match=r"expected label agreement >= 0\.999") as info:
        export(
            trained.model,
            FEATURE_NAMES,
            "m",
            X_holdout=trained.X_holdout,
            out=tmp_path / "m.onnx",
            created_at=PINNED,
        )
    assert info.value.report.label_agreement == pytest.approx(1 - 5 / len(trained.X_holdout))
    assert not (tmp_path / "m.onnx").exists()


def test_bad_inputs_are_refused_with_clear_errors(trained: TrainedTriage, tmp_path: Path) -> None:
    from sklearn.ensemble import GradientBoostingClassifier

    with pytest.raises(ExportError, match=r"call \.fit"):
        export(GradientBoostingClassifier(), FEATURE_NAMES, "m", X_holdout=trained.X_holdout)
    with pytest.raises(ExportError, match="10 features but 2"):
        export(trained.model, ["a", "b"], "m", X_holdout=trained.X_holdout)
    with pytest.raises(ExportError, match="X_holdout"):
        export(trained.model, FEATURE_NAMES, "m", X_holdout=trained.X_holdout[:, :3])
    with pytest.raises(ExportError, match="timezone-aware"):
        export(
            trained.model,
            FEATURE_NAMES,
            "m",
            X_holdout=trained.X_holdout,
            created_at=datetime(2025, 1, 1),  # noqa: DTZ001
        )
    with pytest.raises(ExportError, match="path separators"):
        export(trained.model, FEATURE_NAMES, "../m", X_holdout=trained.X_holdout)
    assert list(tmp_path.iterdir()) == []
