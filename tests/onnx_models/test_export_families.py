"""Export of the model families people train: pipelines, regressors, LightGBM, XGBoost.

Each test trains a real small model, exports it, scores the file with ONNX Runtime and checks it
against the native model on held-out rows.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from streamml.onnx_models import (
    FEATURE_NAMES,
    ExportedModel,
    ExportError,
    FeatureContract,
    ModelRegistry,
    ParityError,
    ValueParityReport,
    bundled_model_path,
    create_session,
    ensure_demo_registry,
    export,
    generate_speedtests,
    output_kind_of,
    read_metadata,
    run_model,
)

PINNED = datetime(2025, 1, 1, tzinfo=UTC)
CATEGORICAL = FEATURE_NAMES.index("connected_devices")
TARGET = FEATURE_NAMES.index("latency_ms")
REG_FEATURES = tuple(n for i, n in enumerate(FEATURE_NAMES) if i != TARGET)


@dataclass(frozen=True)
class Split:
    X_train: np.ndarray
    y_train: np.ndarray
    X_holdout: np.ndarray
    y_holdout: np.ndarray


@pytest.fixture(scope="module")
def classes_split() -> Split:
    """Speed tests labelled wifi / modem / network."""
    data = generate_speedtests(1500, seed=21)
    return Split(data.X[:1200], data.y[:1200], data.X[1200:], data.y[1200:])


@pytest.fixture(scope="module")
def values_split() -> Split:
    """The speed test's latency as a target, predicted from the other nine features."""
    data = generate_speedtests(1500, seed=22)
    X = np.delete(data.X, TARGET, axis=1)
    y = data.X[:, TARGET].astype(np.float64)
    return Split(X[:1200], y[:1200], X[1200:], y[1200:])


def mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def one_hot_pipeline(estimator: Any, n_features: int, categorical: int) -> Any:
    numeric = [i for i in range(n_features) if i != categorical]
    columns = ColumnTransformer(
        [
            ("scale", StandardScaler(), numeric),
            ("one_hot", OneHotEncoder(handle_unknown="ignore"), [categorical]),
        ]
    )
    return make_pipeline(columns, estimator)


def export_and_check_classifier(
    model: Any, split: Split, tmp_path: Path, *, framework: str, tolerance: float
) -> ExportedModel:
    model.fit(split.X_train, split.y_train)
    exported = export(
        model,
        FEATURE_NAMES,
        "clf",
        X_holdout=split.X_holdout,
        version="1",
        training_data=split.X_train,
        out=tmp_path,
        created_at=PINNED,
    )
    assert exported.output_kind == "classifier"
    assert exported.parity.passed
    assert exported.parity.probability_tolerance == tolerance
    assert exported.parity.rows == len(split.X_holdout)
    meta = read_metadata(onnx.load(exported.path))
    assert meta["output_kind"] == "classifier"
    assert meta["framework"] == framework
    assert meta["classes"] == [str(c) for c in model.classes_]
    assert exported.metadata["parity"]["passed"] is True
    out = run_model(create_session(exported.path.read_bytes()), split.X_holdout)
    assert out.kind == "classifier" and out.values is None
    X32 = split.X_holdout.astype(np.float32)
    native_labels = np.asarray(model.predict(X32)).astype(str)
    assert np.mean(out.labels.astype(str) == native_labels) >= 0.999
    np.testing.assert_allclose(out.probabilities, model.predict_proba(X32), rtol=0, atol=tolerance)
    return exported


def export_and_check_regressor(
    model: Any, split: Split, tmp_path: Path, *, framework: str
) -> ExportedModel:
    model.fit(split.X_train, split.y_train)
    exported = export(
        model,
        REG_FEATURES,
        "reg",
        X_holdout=split.X_holdout,
        version="1",
        metrics={"r2": float(model.score(split.X_holdout, split.y_holdout))},
        training_data=split.X_train,
        out=tmp_path,
        created_at=PINNED,
    )
    assert exported.output_kind == "regressor"
    assert exported.classes == ()
    assert isinstance(exported.parity, ValueParityReport)
    assert exported.parity.passed and exported.parity.value_tolerance == 1e-4
    model_proto = onnx.load(exported.path)
    assert [o.name for o in model_proto.graph.output] == ["value"]
    assert output_kind_of(model_proto) == "regressor"
    meta = read_metadata(model_proto)
    assert meta["framework"] == framework and meta["classes"] == []
    assert meta["metrics"]["r2"] > 0.1  # a real model of latency, not noise
    assert exported.metadata["parity"]["max_value_diff"] <= 1e-4
    out = run_model(create_session(exported.path.read_bytes()), split.X_holdout)
    assert out.kind == "regressor" and out.labels is None
    native = model.predict(split.X_holdout.astype(np.float32))
    assert out.values.shape == native.shape
    scale = np.maximum(1.0, np.abs(native))
    assert np.max(np.abs(out.values - native) / scale) <= 1e-4
    return exported


def test_pipeline_with_scaler_and_one_hot_classifier(classes_split: Split, tmp_path: Path) -> None:
    model = one_hot_pipeline(LogisticRegression(max_iter=500), len(FEATURE_NAMES), CATEGORICAL)
    exported = export_and_check_classifier(
        model, classes_split, tmp_path, framework="sklearn", tolerance=1e-4
    )
    ops = {n.op_type for n in onnx.load(exported.path).graph.node}
    assert {"Scaler", "OneHotEncoder"} <= ops
    assert exported.metadata["estimator"] == "Pipeline"


def test_linear_regression_pipeline_with_one_hot(values_split: Split, tmp_path: Path) -> None:
    model = one_hot_pipeline(
        LinearRegression(), len(REG_FEATURES), REG_FEATURES.index("connected_devices")
    )
    export_and_check_regressor(model, values_split, tmp_path, framework="sklearn")


def test_gradient_boosting_regressor(values_split: Split, tmp_path: Path) -> None:
    model = GradientBoostingRegressor(n_estimators=30, max_depth=3, random_state=0)
    exported = export_and_check_regressor(model, values_split, tmp_path, framework="sklearn")
    assert exported.metadata["estimator"] == "GradientBoostingRegressor"


def test_lightgbm_classifier_and_regressor(
    classes_split: Split, values_split: Split, tmp_path: Path
) -> None:
    lightgbm = pytest.importorskip("lightgbm")
    clf = lightgbm.LGBMClassifier(
        n_estimators=30, num_leaves=15, verbose=-1, n_jobs=1, random_state=0
    )
    exported = export_and_check_classifier(
        clf, classes_split, mkdir(tmp_path / "c"), framework="lightgbm", tolerance=1e-3
    )
    assert exported.classes == ("modem", "network", "wifi")
    assert {"lightgbm", "onnxmltools"} <= set(exported.metadata["libraries"])
    reg = lightgbm.LGBMRegressor(
        n_estimators=30, num_leaves=15, verbose=-1, n_jobs=1, random_state=0
    )
    export_and_check_regressor(reg, values_split, mkdir(tmp_path / "r"), framework="lightgbm")


def test_xgboost_classifier_and_regressor(
    classes_split: Split, values_split: Split, tmp_path: Path
) -> None:
    xgboost = pytest.importorskip("xgboost")
    codes = {"modem": 0, "network": 1, "wifi": 2}
    encoded = Split(
        classes_split.X_train,
        np.array([codes[c] for c in classes_split.y_train]),
        classes_split.X_holdout,
        np.array([codes[c] for c in classes_split.y_holdout]),
    )
    clf = xgboost.XGBClassifier(n_estimators=30, max_depth=3, n_jobs=1, random_state=0)
    exported = export_and_check_classifier(
        clf, encoded, mkdir(tmp_path / "c"), framework="xgboost", tolerance=1e-3
    )
    assert exported.classes == ("0", "1", "2")
    assert {"xgboost", "onnxmltools"} <= set(exported.metadata["libraries"])
    reg = xgboost.XGBRegressor(n_estimators=30, max_depth=3, n_jobs=1, random_state=0)
    export_and_check_regressor(reg, values_split, mkdir(tmp_path / "r"), framework="xgboost")


def test_lightgbm_in_a_pipeline(classes_split: Split, tmp_path: Path) -> None:
    lightgbm = pytest.importorskip("lightgbm")
    model = make_pipeline(
        StandardScaler(),
        lightgbm.LGBMClassifier(n_estimators=20, verbose=-1, n_jobs=1, random_state=0),
    )
    export_and_check_classifier(
        model, classes_split, tmp_path, framework="lightgbm", tolerance=1e-3
    )


def test_a_model_the_converter_gets_wrong_is_refused(values_split: Split, tmp_path: Path) -> None:
    """LightGBM's linear trees convert without their leaf models: the values differ, refused."""
    lightgbm = pytest.importorskip("lightgbm")
    model = lightgbm.LGBMRegressor(
        n_estimators=20, linear_tree=True, verbose=-1, n_jobs=1, random_state=0
    )
    model.fit(values_split.X_train, values_split.y_train)
    target = tmp_path / "never.onnx"
    with pytest.raises(ParityError, match="parity check failed") as info:
        export(
            model,
            REG_FEATURES,
            "linear-trees",
            X_holdout=values_split.X_holdout,
            out=target,
            created_at=PINNED,
        )
    report = info.value.report
    assert isinstance(report, ValueParityReport) and not report.passed
    assert report.max_value_diff > 1e-2
    assert "linear_tree" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_zero_value_tolerance_is_refused(values_split: Split, tmp_path: Path) -> None:
    model = LinearRegression().fit(values_split.X_train, values_split.y_train)
    with pytest.raises(ParityError, match=r"expected every value within 0\.0"):
        export(
            model,
            REG_FEATURES,
            "m",
            X_holdout=values_split.X_holdout,
            out=tmp_path / "m.onnx",
            value_tolerance=0.0,
            created_at=PINNED,
        )
    assert list(tmp_path.iterdir()) == []


def test_unfitted_regressor_is_refused(values_split: Split) -> None:
    with pytest.raises(ExportError, match=r"unfitted GradientBoostingRegressor; call \.fit"):
        export(GradientBoostingRegressor(), REG_FEATURES, "m", X_holdout=values_split.X_holdout)


def test_registered_regressor_keeps_its_output_kind(values_split: Split, tmp_path: Path) -> None:
    model = LinearRegression().fit(values_split.X_train, values_split.y_train)
    exported = export(
        model, REG_FEATURES, "latency", X_holdout=values_split.X_holdout, out=tmp_path
    )
    registry = ModelRegistry(tmp_path / "registry")
    contract = FeatureContract.from_names(REG_FEATURES, ttl_ms=60_000)
    version = registry.register(exported.path, contract=contract)
    assert version.output_kind == "regressor" and version.classes == ()
    loaded = registry.load(version.name, version.version)
    out = run_model(create_session(loaded.model_bytes), values_split.X_holdout[:5])
    np.testing.assert_allclose(
        out.values, model.predict(values_split.X_holdout[:5].astype(np.float32)), rtol=1e-5
    )


def test_models_exported_before_output_kind_are_classifiers(tmp_path: Path) -> None:
    bundled = onnx.load(bundled_model_path())
    assert "output_kind" not in read_metadata(bundled)
    assert output_kind_of(bundled) == "classifier"
    version = ensure_demo_registry(tmp_path / "registry")
    assert version.output_kind == "classifier"
    loaded = ModelRegistry(tmp_path / "registry").load(version.name, version.version)
    out = run_model(create_session(loaded.model_bytes), generate_speedtests(5, seed=1).X)
    assert out.kind == "classifier" and out.probabilities.shape == (5, 3)


def test_sklearn_export_imports_no_boosting_library(tmp_path: Path) -> None:
    probe = (
        "import sys\n"
        "import numpy as np\n"
        "from sklearn.linear_model import LinearRegression\n"
        "from streamml.onnx_models import export\n"
        "X = np.arange(40, dtype=np.float32).reshape(20, 2)\n"
        "m = LinearRegression().fit(X, X[:, 0] * 2 + X[:, 1])\n"
        f"export(m, ['a', 'b'], 'm', X_holdout=X, out={str(tmp_path)!r})\n"
        "print(sorted(n for n in ('lightgbm', 'xgboost', 'onnxmltools') if n in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
