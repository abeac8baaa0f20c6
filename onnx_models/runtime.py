"""ONNX Runtime sessions with deliberate thread and provider settings."""

from __future__ import annotations

from collections.abc import Sequence

import onnxruntime as ort

__all__ = ["create_session"]


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
