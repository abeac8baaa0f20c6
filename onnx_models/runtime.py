"""ONNX Runtime sessions with deliberate thread and provider settings; scoring by output kind."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
from streamml.onnx_models.model_format import (
    INPUT_NAME,
    LABEL_OUTPUT,
    PROBABILITIES_OUTPUT,
    VALUE_OUTPUT,
    OutputKind,
)

__all__ = ["ModelOutputs", "create_session", "run_model"]


def create_session(
    source: bytes | str,
    *,
    intra_op_threads: int = 1,
    inter_op_threads: int = 1,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> ort.InferenceSession:
    """Return an inference session for model bytes or a model path.

    Pass verified bytes (`ModelRegistry.load`) rather than paths to score what was checked.
    """
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = inter_op_threads
    return ort.InferenceSession(source, opts, providers=list(providers))


@dataclass(frozen=True)
class ModelOutputs:
    """What an exported model returned for a batch of rows.

    A classifier fills `labels` (one per row) and `probabilities` (rows x classes, float32); a
    regressor fills `values` (one float32 per row). The other fields are None.
    """

    kind: OutputKind
    labels: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    values: np.ndarray | None = None


def run_model(session: ort.InferenceSession, X: np.ndarray) -> ModelOutputs:
    """Score the float32 rows `X` with a session of an exported model, whatever its output kind.

    The kind is read from the session's outputs: `value` for a regressor, `label` and
    `probabilities` for a classifier. Raises `ValueError` for a model with neither.
    """
    outputs = [o.name for o in session.get_outputs()]
    feed = {INPUT_NAME: np.ascontiguousarray(X, dtype=np.float32)}
    if outputs[:1] == [VALUE_OUTPUT]:
        (values,) = session.run([VALUE_OUTPUT], feed)
        return ModelOutputs("regressor", values=np.asarray(values).reshape(-1))
    if outputs[:2] == [LABEL_OUTPUT, PROBABILITIES_OUTPUT]:
        labels, probs = session.run([LABEL_OUTPUT, PROBABILITIES_OUTPUT], feed)
        return ModelOutputs("classifier", labels=np.asarray(labels), probabilities=probs)
    raise ValueError(
        f"expected outputs [{VALUE_OUTPUT!r}] (regressor) or [{LABEL_OUTPUT!r}, "
        f"{PROBABILITIES_OUTPUT!r}] (classifier), got {outputs}; export with "
        f"streamml.onnx_models.export"
    )
