"""Convert a fitted scikit-learn, LightGBM or XGBoost model (or a pipeline ending in one) to ONNX.

Every model goes through skl2onnx's `convert_sklearn`, so pipelines with preprocessing convert the
same way whatever their final estimator: LightGBM and XGBoost estimators are registered with
skl2onnx on first use, with the operator converters of onnxmltools. lightgbm, xgboost and
onnxmltools are imported only when a model of theirs is exported (install `streamml[train]`).
"""

from __future__ import annotations

import functools
from typing import Any

import onnx

__all__ = [
    "FRAMEWORKS",
    "ConversionError",
    "convert",
    "final_estimator",
    "framework_of",
    "is_tree_model",
]

FRAMEWORKS = ("sklearn", "lightgbm", "xgboost")
"""The libraries whose models `convert` takes, by the name of their top-level module."""

_ML_OPSET_FOR_ONNXMLTOOLS = 3
_CLASSIFIER_OPTIONS = {"nocl": [True, False], "zipmap": [True, False, "columns"]}
_SKL2ONNX_OUTPUTS = {"classifier": ("label", "probabilities"), "regressor": ("variable",)}


class ConversionError(ValueError):
    """The converter refused the model, or produced outputs other than the expected ones."""


def final_estimator(model: Any) -> Any:
    """Return the last step of a (nested) pipeline, or the model itself."""
    steps = getattr(model, "steps", None)
    if steps:
        return final_estimator(steps[-1][1])
    return model


def framework_of(model: Any) -> str:
    """Return `lightgbm` or `xgboost` when the final estimator comes from them, else `sklearn`."""
    top = type(final_estimator(model)).__module__.split(".", 1)[0]
    return top if top in ("lightgbm", "xgboost") else "sklearn"


def is_tree_model(est: Any) -> bool:
    """Return True for tree ensembles (scikit-learn trees and ensembles, LightGBM, XGBoost)."""
    module = type(est).__module__
    return module.startswith(
        ("sklearn.ensemble", "sklearn.tree", "lightgbm", "xgboost")
    ) or hasattr(est, "tree_")


@functools.cache
def _register(framework: str) -> None:
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    if framework == "lightgbm":
        from lightgbm import LGBMClassifier, LGBMRegressor
        from onnxmltools.convert.lightgbm.operator_converters.LightGbm import convert_lightgbm

        update_registered_converter(
            LGBMClassifier,
            "LightGbmLGBMClassifier",
            calculate_linear_classifier_output_shapes,
            convert_lightgbm,
            options=_CLASSIFIER_OPTIONS,
        )
        update_registered_converter(
            LGBMRegressor,
            "LightGbmLGBMRegressor",
            calculate_linear_regressor_output_shapes,
            convert_lightgbm,
            options={"split": None},
        )
    elif framework == "xgboost":
        from onnxmltools.convert.xgboost.operator_converters.XGBoost import convert_xgboost
        from xgboost import XGBClassifier, XGBRegressor

        update_registered_converter(
            XGBClassifier,
            "XGBoostXGBClassifier",
            calculate_linear_classifier_output_shapes,
            convert_xgboost,
            options=_CLASSIFIER_OPTIONS,
        )
        update_registered_converter(
            XGBRegressor,
            "XGBoostXGBRegressor",
            calculate_linear_regressor_output_shapes,
            convert_xgboost,
        )


def _rename_value(onx: onnx.ModelProto, old: str, new: str) -> None:
    for node in onx.graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for out in onx.graph.output:
        if out.name == old:
            out.name = new


def convert(
    model: Any,
    *,
    input_name: str,
    n_features: int,
    kind: str,
    output_names: tuple[str, ...],
    target_opset: int | None,
) -> onnx.ModelProto:
    """Convert `model` to ONNX with one float32 input and the given output names.

    `kind` is `classifier` (outputs: label, probabilities; no ZipMap) or `regressor` (one output,
    the predicted value, shape [N, 1]). Raises `ConversionError` saying what failed.
    """
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    framework = framework_of(model)
    opset: int | dict[str, int] | None = target_opset
    if framework != "sklearn":
        try:
            _register(framework)
        except ImportError as exc:
            raise ConversionError(
                f"exporting a {framework} model needs {framework} and onnxmltools: "
                f"pip install 'streamml[train]' ({exc})"
            ) from exc
        from skl2onnx import get_latest_tested_opset_version

        # skl2onnx refuses the newer ai.onnx.ml opset onnxmltools would pick by default.
        opset = {
            "": target_opset or get_latest_tested_opset_version(),
            "ai.onnx.ml": _ML_OPSET_FOR_ONNXMLTOOLS,
        }
    est = final_estimator(model)
    options = {id(est): {"zipmap": False}} if kind == "classifier" else None
    try:
        onx = convert_sklearn(
            model,
            initial_types=[(input_name, FloatTensorType([None, n_features]))],
            options=options,
            target_opset=opset,
        )
    except Exception as exc:
        raise ConversionError(
            f"skl2onnx could not convert {type(model).__name__}: {exc}. Supported: most "
            f"scikit-learn classifiers, regressors and pipelines, LightGBM and XGBoost "
            f"classifiers and regressors; HistGradientBoostingClassifier fails under numpy 2.x, "
            f"use GradientBoostingClassifier instead"
        ) from exc
    produced = tuple(o.name for o in onx.graph.output)
    expected = _SKL2ONNX_OUTPUTS[kind]
    if produced[: len(expected)] != expected:
        raise ConversionError(
            f"expected the {kind} outputs {list(expected)}, the conversion produced "
            f"{list(produced)}; export single-output classifiers or regressors only"
        )
    for old, new in zip(expected, output_names, strict=True):
        if old != new:
            _rename_value(onx, old, new)
    return onx
