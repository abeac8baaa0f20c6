"""Turn a fitted scikit-learn classifier into a checked, self-describing ONNX model.

`export` converts with skl2onnx (float32 input `features` of shape [None, n_features]; outputs
`label` and a `probabilities` tensor, no ZipMap), stamps the model with metadata properties
(prefixed `streamml.`), scores held-out rows with both ONNX Runtime and the native estimator, and
writes the file only when the two agree (`ParityError` otherwise). Writes are atomic.
"""

from __future__ import annotations

import hashlib
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import orjson
from streamml.onnx_models._files import atomic_write
from streamml.onnx_models.reference import training_reference

__all__ = [
    "INPUT_NAME",
    "LABEL_OUTPUT",
    "METADATA_PREFIX",
    "PROBABILITIES_OUTPUT",
    "ExportError",
    "ExportedModel",
    "ParityError",
    "ParityReport",
    "check_parity",
    "export",
    "fingerprint",
    "library_versions",
    "read_metadata",
]

INPUT_NAME = "features"
"""Name of the float32 input tensor of every exported model."""
LABEL_OUTPUT = "label"
"""Name of the predicted-class output tensor."""
PROBABILITIES_OUTPUT = "probabilities"
"""Name of the class-probability output tensor (rows x classes)."""
METADATA_PREFIX = "streamml."
"""Prefix of the metadata properties this module writes."""

_LINEAR_TOLERANCE = 1e-4
_TREE_TOLERANCE = 1e-3
_MIN_LABEL_AGREEMENT = 0.999


class ExportError(ValueError):
    """The estimator or its arguments cannot be exported as given."""


class ParityError(ExportError):
    """ONNX Runtime and the native estimator disagree on held-out rows; nothing was written."""

    def __init__(self, message: str, report: ParityReport) -> None:
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
class ExportedModel:
    """A written ONNX model: where it is, its content hash, what it holds and its parity figures."""

    path: Path
    sha256: str
    name: str
    version: str
    feature_names: tuple[str, ...]
    classes: tuple[str, ...]
    parity: ParityReport
    metadata: dict[str, Any] = field(default_factory=dict)


def fingerprint(data: np.ndarray) -> str:
    """Return the sha256 fingerprint of a training matrix.

    The digest covers `"<dtype>|<shape>|"` followed by the C-ordered bytes of the array, so two
    matrices with the same bytes but different shapes or dtypes differ.
    """
    arr = np.ascontiguousarray(data)
    if arr.dtype == object:
        raise ExportError(
            "training_data must be a numeric array, got dtype=object; pass the feature matrix"
        )
    h = hashlib.sha256()
    h.update(f"{arr.dtype.str}|{arr.shape}|".encode())
    h.update(arr.tobytes())
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    """Return the versions of the libraries that shape an exported model."""
    import onnxruntime
    import skl2onnx
    import sklearn

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "skl2onnx": skl2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def read_metadata(model: onnx.ModelProto) -> dict[str, Any]:
    """Return the `streamml.` metadata properties of a model, JSON values decoded."""
    out: dict[str, Any] = {}
    for prop in model.metadata_props:
        if not prop.key.startswith(METADATA_PREFIX):
            continue
        key = prop.key[len(METADATA_PREFIX) :]
        try:
            out[key] = orjson.loads(prop.value)
        except orjson.JSONDecodeError:
            out[key] = prop.value
    return out


def _final_estimator(model: Any) -> Any:
    steps = getattr(model, "steps", None)
    if steps:
        return _final_estimator(steps[-1][1])
    return model


def _is_tree_model(est: Any) -> bool:
    module = type(est).__module__
    return module.startswith(("sklearn.ensemble", "sklearn.tree")) or hasattr(est, "tree_")


def _check_fitted(model: Any) -> tuple[str, ...]:
    est = _final_estimator(model)
    classes = getattr(est, "classes_", None)
    if classes is None or not hasattr(model, "predict_proba"):
        raise ExportError(
            f"expected a fitted scikit-learn classifier (with classes_ and predict_proba), got "
            f"{type(model).__name__}; call .fit(X, y) first"
        )
    return tuple(str(c) for c in classes)


def _convert(model: Any, n_features: int, target_opset: int | None) -> onnx.ModelProto:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    est = _final_estimator(model)
    options = {id(est): {"zipmap": False}}
    try:
        onx = convert_sklearn(
            model,
            initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
            options=options,
            target_opset=target_opset,
        )
    except Exception as exc:
        raise ExportError(
            f"skl2onnx could not convert {type(model).__name__}: {exc}. Supported: most "
            f"scikit-learn classifiers; HistGradientBoostingClassifier fails under numpy 2.x, "
            f"use GradientBoostingClassifier instead"
        ) from exc
    outputs = [o.name for o in onx.graph.output]
    if outputs[:2] != [LABEL_OUTPUT, PROBABILITIES_OUTPUT]:
        raise ExportError(
            f"expected outputs [{LABEL_OUTPUT!r}, {PROBABILITIES_OUTPUT!r}], the conversion "
            f"produced {outputs}; export classifiers only"
        )
    return onx


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
    target_opset: int | None = None,
) -> ExportedModel:
    """Export a fitted classifier (estimator or pipeline) to ONNX, checked for parity.

    `feature_names` gives the input columns in order. `X_holdout` (rows not used for training)
    is scored by both runtimes: the predicted class must agree on at least `min_label_agreement`
    of the rows and probabilities must be within `probability_tolerance` (default 1e-3 for tree
    models, 1e-4 otherwise), else `ParityError` is raised and nothing is written. `out` is the
    target file, or a directory receiving `<name>-<version>.onnx` (default: current directory).
    `version` defaults to the UTC creation time as `YYYYMMDDTHHMMSSZ`. `created_at` must be
    timezone-aware (pin it to make the bytes reproducible). With `training_data`, the model
    also carries its fingerprint and its training reference (`streamml.onnx_models.reference`),
    which live monitoring compares scored feature values against.
    """
    names = tuple(str(n) for n in feature_names)
    if not name or "/" in name or "\\" in name:
        raise ExportError(f"expected a model name without path separators, got {name!r}")
    if len(set(names)) != len(names) or not names:
        raise ExportError(f"feature_names must be non-empty and unique, got {list(names)}")
    classes = _check_fitted(model)
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
    tolerance = probability_tolerance
    if tolerance is None:
        tolerance = (
            _TREE_TOLERANCE if _is_tree_model(_final_estimator(model)) else _LINEAR_TOLERANCE
        )

    onx = _convert(model, len(names), target_opset)
    onx.graph.name = name
    opsets = sorted(
        {(o.domain, o.version) for o in onx.opset_import}, key=lambda dv: (dv[0], dv[1])
    )
    del onx.opset_import[:]
    for domain, opset_version in opsets:
        onx.opset_import.add(domain=domain, version=opset_version)
    onx.doc_string = f"{name} {version}: classes {list(classes)}"
    meta: dict[str, Any] = {
        "name": name,
        "version": version,
        "feature_names": list(names),
        "feature_types": ["float32"] * len(names),
        "classes": list(classes),
        "training_data_sha256": fingerprint(training_data) if training_data is not None else None,
        "training_rows": int(np.asarray(training_data).shape[0])
        if training_data is not None
        else None,
        "metrics": dict(metrics or {}),
        "training_reference": training_reference(training_data, names)
        if training_data is not None
        else None,
        "created_at": created_at.isoformat(),
        "created_by": created_by,
        "estimator": type(model).__name__,
        "libraries": library_versions(),
    }
    onnx.helper.set_model_props(
        onx, {METADATA_PREFIX + k: orjson.dumps(v).decode() for k, v in meta.items()}
    )
    model_bytes = onx.SerializeToString()
    report = check_parity(
        model,
        model_bytes,
        X_hold,
        probability_tolerance=tolerance,
        min_label_agreement=min_label_agreement,
    )
    meta["parity"] = report.to_json()
    if not report.passed:
        raise ParityError(
            f"ONNX parity check failed for {name} {version} on {report.rows} held-out rows: "
            f"expected label agreement >= {min_label_agreement} and probability difference <= "
            f"{tolerance}, found agreement {report.label_agreement:.6f} and max difference "
            f"{report.max_probability_diff:.3g}. Nothing was written; check the estimator is "
            f"supported by skl2onnx and that features are float32-representable",
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
    )
