"""Turn a fitted classifier or regressor into a checked, self-describing ONNX model.

`export` takes scikit-learn estimators and pipelines (scalers, one-hot encoding in a column
transformer, ...) and LightGBM and XGBoost models (through onnxmltools; `streamml[train]`). It
converts with skl2onnx to a float32 input `features` of shape [None, n_features] and, for a
classifier, outputs `label` and a `probabilities` tensor (no ZipMap), for a regressor one `value`
tensor of shape [None, 1]. It stamps the model with metadata properties (prefixed `streamml.`,
`output_kind` saying which of the two it is), scores held-out rows with both ONNX Runtime and the
native model, and writes the file only when the two agree (`ParityError` otherwise). Writes are
atomic.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import orjson
from streamml.onnx_models import _converters
from streamml.onnx_models._files import atomic_write
from streamml.onnx_models.model_format import (
    INPUT_NAME,
    LABEL_OUTPUT,
    METADATA_PREFIX,
    PROBABILITIES_OUTPUT,
    VALUE_OUTPUT,
    ExportError,
    OutputKind,
    fingerprint,
    library_versions,
    read_metadata,
)
from streamml.onnx_models.reference import training_reference

# The model-format names most callers need are importable from here too.
__all__ = [
    "INPUT_NAME",
    "LABEL_OUTPUT",
    "METADATA_PREFIX",
    "PROBABILITIES_OUTPUT",
    "ExportError",
    "ExportedModel",
    "ParityError",
    "ParityReport",
    "ValueParityReport",
    "check_parity",
    "check_value_parity",
    "export",
    "fingerprint",
    "library_versions",
    "read_metadata",
]

_LINEAR_TOLERANCE = 1e-4
_TREE_TOLERANCE = 1e-3
_VALUE_TOLERANCE = 1e-4
_MIN_LABEL_AGREEMENT = 0.999


class ParityError(ExportError):
    """ONNX Runtime and the native estimator disagree on held-out rows; nothing was written."""

    def __init__(self, message: str, report: ParityReport | ValueParityReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class ParityReport:
    """How ONNX Runtime compared with the native estimator on the held-out rows."""

    rows: int
    label_agreement: float
    max_probability_diff: float
    probability_tolerance: float
    min_label_agreement: float

    @property
    def passed(self) -> bool:
        """True when both labels and probabilities are within bounds."""
        return (
            self.label_agreement >= self.min_label_agreement
            and self.max_probability_diff <= self.probability_tolerance
        )

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "rows": self.rows,
            "label_agreement": self.label_agreement,
            "max_probability_diff": self.max_probability_diff,
            "probability_tolerance": self.probability_tolerance,
            "min_label_agreement": self.min_label_agreement,
            "passed": self.passed,
        }


@dataclass(frozen=True)
class ValueParityReport:
    """How ONNX Runtime compared with a native regressor on the held-out rows.

    A row agrees when `|onnx - native| <= value_tolerance * max(1, |native|)`: relative to the
    predicted value, absolute below 1. `max_value_diff` is the largest such relative difference.
    """

    rows: int
    max_value_diff: float
    value_tolerance: float

    @property
    def passed(self) -> bool:
        """True when every row's value is within the tolerance."""
        return self.max_value_diff <= self.value_tolerance

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "rows": self.rows,
            "max_value_diff": self.max_value_diff,
            "value_tolerance": self.value_tolerance,
            "passed": self.passed,
        }


@dataclass(frozen=True)
class ExportedModel:
    """A written ONNX model: where it is, its content hash, what it holds and its parity figures.

    A regressor has no `classes` and a `ValueParityReport`.
    """

    path: Path
    sha256: str
    name: str
    version: str
    feature_names: tuple[str, ...]
    classes: tuple[str, ...]
    parity: ParityReport | ValueParityReport
    metadata: dict[str, Any] = field(default_factory=dict)
    output_kind: OutputKind = "classifier"


def _is_regressor(model: Any) -> bool:
    from sklearn.base import is_regressor

    try:
        return bool(is_regressor(model))
    except Exception:
        return False


def _check_fitted(model: Any) -> tuple[OutputKind, tuple[str, ...]]:
    """Return the model's output kind and (for a classifier) its classes."""
    est = _converters.final_estimator(model)
    classes = getattr(est, "classes_", None)
    if classes is not None and hasattr(model, "predict_proba"):
        return "classifier", tuple(str(c) for c in classes)
    if _is_regressor(model) and hasattr(model, "predict"):
        from sklearn.exceptions import NotFittedError
        from sklearn.utils.validation import check_is_fitted

        try:
            check_is_fitted(model)
        except NotFittedError:
            pass
        else:
            return "regressor", ()
        raise ExportError(
            f"expected a fitted regressor, got an unfitted {type(model).__name__}; "
            f"call .fit(X, y) first"
        )
    raise ExportError(
        f"expected a fitted scikit-learn classifier (with classes_ and predict_proba) or "
        f"regressor (scikit-learn, LightGBM or XGBoost, or a pipeline ending in one), got "
        f"{type(model).__name__}; call .fit(X, y) first"
    )


def _convert(
    model: Any, n_features: int, target_opset: int | None, kind: OutputKind = "classifier"
) -> onnx.ModelProto:
    outputs = (LABEL_OUTPUT, PROBABILITIES_OUTPUT) if kind == "classifier" else (VALUE_OUTPUT,)
    try:
        return _converters.convert(
            model,
            input_name=INPUT_NAME,
            n_features=n_features,
            kind=kind,
            output_names=outputs,
            target_opset=target_opset,
        )
    except _converters.ConversionError as exc:
        raise ExportError(str(exc)) from exc


def _onnx_predict(model_bytes: bytes, X32: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    labels, probs = sess.run([LABEL_OUTPUT, PROBABILITIES_OUTPUT], {INPUT_NAME: X32})
    return np.asarray(labels), np.asarray(probs, dtype=np.float64)


def check_parity(
    model: Any,
    model_bytes: bytes,
    X_holdout: np.ndarray,
    *,
    probability_tolerance: float,
    min_label_agreement: float = _MIN_LABEL_AGREEMENT,
) -> ParityReport:
    """Score `X_holdout` with ONNX Runtime and the native model; return how they compare."""
    X32 = np.ascontiguousarray(X_holdout, dtype=np.float32)
    onnx_labels, onnx_probs = _onnx_predict(model_bytes, X32)
    native_probs = np.asarray(model.predict_proba(X32), dtype=np.float64)
    native_labels = np.asarray(model.predict(X32))
    agree = float(np.mean(onnx_labels.astype(str) == native_labels.astype(str)))
    diff = float(np.max(np.abs(onnx_probs - native_probs))) if native_probs.size else 0.0
    return ParityReport(
        rows=int(X32.shape[0]),
        label_agreement=agree,
        max_probability_diff=diff,
        probability_tolerance=probability_tolerance,
        min_label_agreement=min_label_agreement,
    )


def _onnx_values(model_bytes: bytes, X32: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    (values,) = sess.run([VALUE_OUTPUT], {INPUT_NAME: X32})
    return np.asarray(values, dtype=np.float64).reshape(-1)


def check_value_parity(
    model: Any,
    model_bytes: bytes,
    X_holdout: np.ndarray,
    *,
    value_tolerance: float,
) -> ValueParityReport:
    """Score `X_holdout` with ONNX Runtime and a native regressor; return how they compare."""
    X32 = np.ascontiguousarray(X_holdout, dtype=np.float32)
    onnx_values = _onnx_values(model_bytes, X32)
    native = np.asarray(model.predict(X32), dtype=np.float64).reshape(-1)
    if native.shape != onnx_values.shape:
        diff = float("inf")
    elif native.size:
        rel = np.abs(onnx_values - native) / np.maximum(1.0, np.abs(native))
        diff = float(np.max(np.where(np.isnan(rel), np.inf, rel)))
    else:
        diff = 0.0
    return ValueParityReport(
        rows=int(X32.shape[0]), max_value_diff=diff, value_tolerance=value_tolerance
    )


def _reference(training_data: Any, names: Sequence[str]) -> dict[str, Any] | None:
    """Return the training reference of numeric training data (None for other data)."""
    if training_data is None:
        return None
    try:
        return training_reference(np.asarray(training_data, dtype=np.float64), names)
    except (TypeError, ValueError):
        return None


def export(
    model: Any,
    feature_names: Sequence[str],
    name: str,
    *,
    X_holdout: np.ndarray,
    version: str | None = None,
    metrics: Mapping[str, float] | None = None,
    training_data: np.ndarray | None = None,
    out: str | os.PathLike[str] | None = None,
    created_at: datetime | None = None,
    created_by: str = "streamml.onnx_models.export",
    probability_tolerance: float | None = None,
    min_label_agreement: float = _MIN_LABEL_AGREEMENT,
    value_tolerance: float | None = None,
    target_opset: int | None = None,
) -> ExportedModel:
    """Export a fitted classifier or regressor (estimator or pipeline) to ONNX, checked for parity.

    `model` is a scikit-learn estimator or pipeline, or a LightGBM or XGBoost classifier or
    regressor (alone or ending a pipeline). `feature_names` gives the input columns in order.
    `X_holdout` (rows not used for training) is scored by both runtimes. For a classifier, the
    predicted class must agree on at least `min_label_agreement` of the rows and probabilities
    must be within `probability_tolerance` (absolute; default 1e-3 for tree models, 1e-4
    otherwise). For a regressor, every value must be within `value_tolerance` (default 1e-4)
    relative to the native value, absolute below 1 (see `ValueParityReport`). Otherwise
    `ParityError` is raised and nothing is written. `out` is the target file, or a directory
    receiving `<name>-<version>.onnx` (default: current directory). `version` defaults to the
    UTC creation time as `YYYYMMDDTHHMMSSZ`. `created_at` must be timezone-aware (pin it to make
    the bytes reproducible). With `training_data`, the model
    also carries its fingerprint and its training reference (`streamml.onnx_models.reference`),
    which live monitoring compares scored feature values against.
    """
    names = tuple(str(n) for n in feature_names)
    if not name or "/" in name or "\\" in name:
        raise ExportError(f"expected a model name without path separators, got {name!r}")
    if len(set(names)) != len(names) or not names:
        raise ExportError(f"feature_names must be non-empty and unique, got {list(names)}")
    kind, classes = _check_fitted(model)
    n_in = getattr(model, "n_features_in_", len(names))
    if n_in != len(names):
        raise ExportError(
            f"the model was fitted on {n_in} features but {len(names)} feature_names were given"
        )
    X_hold = np.asarray(X_holdout)
    if X_hold.ndim != 2 or X_hold.shape[1] != len(names) or X_hold.shape[0] == 0:
        raise ExportError(
            f"X_holdout must be a non-empty matrix with {len(names)} columns, got shape "
            f"{X_hold.shape}; pass rows held out from training"
        )
    if created_at is None:
        created_at = datetime.now(UTC)
    if created_at.tzinfo is None:
        raise ExportError("created_at must be timezone-aware, e.g. datetime.now(UTC)")
    created_at = created_at.astimezone(UTC)
    if version is None:
        version = created_at.strftime("%Y%m%dT%H%M%SZ")
    framework = _converters.framework_of(model)

    onx = _convert(model, len(names), target_opset, kind)
    onx.graph.name = name
    opsets = sorted(
        {(o.domain, o.version) for o in onx.opset_import}, key=lambda dv: (dv[0], dv[1])
    )
    del onx.opset_import[:]
    for domain, opset_version in opsets:
        onx.opset_import.add(domain=domain, version=opset_version)
    if kind == "classifier":
        onx.doc_string = f"{name} {version}: classes {list(classes)}"
    else:
        onx.doc_string = f"{name} {version}: regressor"
    meta: dict[str, Any] = {
        "name": name,
        "version": version,
        "feature_names": list(names),
        "feature_types": ["float32"] * len(names),
        "classes": list(classes),
        "output_kind": kind,
        "framework": framework,
        "training_data_sha256": fingerprint(training_data) if training_data is not None else None,
        "training_rows": int(np.asarray(training_data).shape[0])
        if training_data is not None
        else None,
        "metrics": dict(metrics or {}),
        "training_reference": _reference(training_data, names),
        "created_at": created_at.isoformat(),
        "created_by": created_by,
        "estimator": type(model).__name__,
        "libraries": library_versions(framework),
    }
    onnx.helper.set_model_props(
        onx, {METADATA_PREFIX + k: orjson.dumps(v).decode() for k, v in meta.items()}
    )
    model_bytes = onx.SerializeToString()
    is_tree = _converters.is_tree_model(_converters.final_estimator(model))
    report: ParityReport | ValueParityReport
    if kind == "classifier":
        tolerance = probability_tolerance
        if tolerance is None:
            tolerance = _TREE_TOLERANCE if is_tree else _LINEAR_TOLERANCE
        report = check_parity(
            model,
            model_bytes,
            X_hold,
            probability_tolerance=tolerance,
            min_label_agreement=min_label_agreement,
        )
        failure = (
            f"expected label agreement >= {min_label_agreement} and probability difference <= "
            f"{tolerance}, found agreement {report.label_agreement:.6f} and max difference "
            f"{report.max_probability_diff:.3g}"
        )
    else:
        tolerance = _VALUE_TOLERANCE if value_tolerance is None else value_tolerance
        report = check_value_parity(model, model_bytes, X_hold, value_tolerance=tolerance)
        failure = (
            f"expected every value within {tolerance} (relative, absolute below 1), found a "
            f"difference of {report.max_value_diff:.3g}"
        )
    meta["parity"] = report.to_json()
    if not report.passed:
        raise ParityError(
            f"ONNX parity check failed for {name} {version} on {report.rows} held-out rows: "
            f"{failure}. Nothing was written; check the estimator is supported by "
            f"{'skl2onnx' if framework == 'sklearn' else 'onnxmltools'} (e.g. LightGBM's "
            f"linear_tree is not) and that features are float32-representable",
            report,
        )
    target = Path(out) if out is not None else Path.cwd()
    if target.is_dir() or out is None or str(out).endswith(os.sep):
        target = target / f"{name}-{version}.onnx"
    if target.suffix != ".onnx":
        raise ExportError(f"expected an output path ending in .onnx, got {str(target)!r}")
    atomic_write(target, model_bytes)
    return ExportedModel(
        path=target,
        sha256=hashlib.sha256(model_bytes).hexdigest(),
        name=name,
        version=version,
        feature_names=names,
        classes=classes,
        parity=report,
        metadata=meta,
        output_kind=kind,
    )
