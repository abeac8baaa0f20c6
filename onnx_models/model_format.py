"""The shape of an exported model: its input and output names, output kinds and metadata.

Every exported model takes one float32 tensor `features` (rows x features). A classifier outputs
`label` (one per row) and `probabilities` (rows x classes); a regressor outputs `value` (rows x
1). Metadata properties are prefixed `streamml.` and hold JSON values; `output_kind` says which of
the two a model is (models exported before it existed are classifiers).
"""

from __future__ import annotations

import hashlib
import importlib
import platform
from typing import Any, Literal

import numpy as np
import onnx
import orjson

__all__ = [
    "INPUT_NAME",
    "LABEL_OUTPUT",
    "METADATA_PREFIX",
    "OUTPUT_KINDS",
    "PROBABILITIES_OUTPUT",
    "VALUE_OUTPUT",
    "ExportError",
    "OutputKind",
    "fingerprint",
    "library_versions",
    "output_kind_of",
    "read_metadata",
]

INPUT_NAME = "features"
"""Name of the float32 input tensor of every exported model."""
LABEL_OUTPUT = "label"
"""Name of the predicted-class output tensor."""
PROBABILITIES_OUTPUT = "probabilities"
"""Name of the class-probability output tensor (rows x classes)."""
VALUE_OUTPUT = "value"
"""Name of a regressor's predicted-value output tensor (rows x 1, float32)."""
METADATA_PREFIX = "streamml."
"""Prefix of the metadata properties `export` writes."""

OutputKind = Literal["classifier", "regressor"]
"""What a model outputs: a class label and class probabilities, or one value."""
OUTPUT_KINDS: tuple[str, ...] = ("classifier", "regressor")
"""Every output kind; a model without `streamml.output_kind` metadata is a classifier."""


class ExportError(ValueError):
    """The estimator or its arguments cannot be exported as given."""


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


def library_versions(framework: str = "sklearn") -> dict[str, str]:
    """Return the versions of the libraries that shape an exported model.

    `framework` (`sklearn`, `lightgbm` or `xgboost`) adds the model's library and onnxmltools.
    """
    import onnxruntime
    import skl2onnx
    import sklearn

    out = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "skl2onnx": skl2onnx.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    if framework != "sklearn":
        import onnxmltools

        out[framework] = importlib.import_module(framework).__version__
        out["onnxmltools"] = onnxmltools.__version__
    return out


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


def output_kind_of(model: onnx.ModelProto) -> OutputKind:
    """Return a model's `streamml.output_kind` (`classifier` when the metadata predates it)."""
    kind = read_metadata(model).get("output_kind", "classifier")
    if kind not in OUTPUT_KINDS:
        raise ExportError(f"expected output_kind to be one of {list(OUTPUT_KINDS)}, got {kind!r}")
    return kind
