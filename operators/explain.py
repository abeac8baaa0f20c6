"""Re-score a stored prediction with its stored features and model version, and compare.

`explain(row, registry)` takes one row of the prediction store (a dict, as `read_predictions`
gives it) and scores the stored feature values again with the same model version through the
same `Scorer` the flow uses, one row at a time, and compares label and probabilities. The
label must be equal; each probability may differ by at most `tolerance` (default 1e-6,
absolute). The tolerance is needed even with the same ONNX Runtime build: a row scored inside a
batch can take other kernels than the same row scored alone. Measured with ONNX Runtime 1.32 on
this machine (tests/operators/test_explain.py): tree ensembles re-score bit-identically, a
scaled logistic regression scored in a batch of 300 differs from the single-row result by up to
1.8e-7. `Explanation.exact` says whether the result is bit-identical. When the prediction
cannot be reproduced the explanation says why, with a machine-readable `reason`:

- `model_deleted` / `version_deleted`: the registry no longer has the model or the version;
- `sha_mismatch`: the version now holds other bytes than the ones that scored the prediction;
- `model_file_changed`: the model file no longer matches its manifest (the registry refuses it);
- `contract_changed`: the version's features (names or order) differ from the stored ones;
- `classes_changed`: the version's classes differ from the stored ones;
- `score_failed`: the model refused the stored values (e.g. NaN where its contract forbids it);
- `label_differs` / `probabilities_differ`: it scored, with another result.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
from streamml.onnx_models import ModelNotFoundError, ModelRegistry, RegistryError
from streamml.operators.scoring import ScoreError, Scorer, ScoreRequest, ScoringConfig
from streamml.state.predictions import read_predictions

__all__ = ["DEFAULT_TOLERANCE", "Explanation", "explain", "explain_request"]

DEFAULT_TOLERANCE = 1e-6
"""Largest absolute difference per probability still counted as reproduced."""


@dataclass(frozen=True)
class Explanation:
    """A stored prediction beside its re-scored result (None when it could not be re-scored)."""

    request_id: str
    model: str
    version: str
    variant: str
    role: str
    classes: tuple[str, ...]
    stored_label: str
    stored_probabilities: tuple[float, ...]
    rescored_label: str | None
    rescored_probabilities: tuple[float, ...] | None
    max_abs_diff: float | None
    reproduced: bool
    reason: str | None
    detail: str
    tolerance: float
    onnxruntime_version: str

    @property
    def exact(self) -> bool:
        """Return whether the re-scored result is bit-identical to the stored one."""
        return self.reproduced and self.max_abs_diff == 0.0

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "request_id": self.request_id,
            "model": self.model,
            "version": self.version,
            "variant": self.variant,
            "role": self.role,
            "classes": list(self.classes),
            "stored": {
                "label": self.stored_label,
                "probabilities": list(self.stored_probabilities),
            },
            "rescored": None
            if self.rescored_label is None
            else {
                "label": self.rescored_label,
                "probabilities": list(self.rescored_probabilities or ()),
            },
            "max_abs_diff": self.max_abs_diff,
            "reproduced": self.reproduced,
            "exact": self.exact,
            "reason": self.reason,
            "detail": self.detail,
            "tolerance": self.tolerance,
            "onnxruntime_version": self.onnxruntime_version,
        }


def _scorer_for(registry: ModelRegistry) -> Scorer:
    return Scorer(ScoringConfig(registry_dir=registry.root, missing_retry_s=0.0))


def explain(
    prediction_row: Mapping[str, Any],
    registry: ModelRegistry | str | os.PathLike[str],
    *,
    scorer: Scorer | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Explanation:
    """Re-score one stored prediction row and compare it (see the module docstring).

    `scorer` defaults to a fresh `Scorer` on `registry`; pass one to reuse its sessions.
    """
    if not isinstance(registry, ModelRegistry):
        registry = ModelRegistry(registry)
    row = prediction_row
    model, version = str(row["model"]), str(row["version"])
    classes = tuple(str(c) for c in row["classes"])
    stored_probs = tuple(float(p) for p in row["probabilities"])

    def result(
        reason: str | None,
        detail: str,
        label: str | None = None,
        probs: tuple[float, ...] | None = None,
        diff: float | None = None,
    ) -> Explanation:
        return Explanation(
            request_id=str(row["request_id"]),
            model=model,
            version=version,
            variant=str(row["variant"]),
            role=str(row["role"]),
            classes=classes,
            stored_label=str(row["label"]),
            stored_probabilities=stored_probs,
            rescored_label=label,
            rescored_probabilities=probs,
            max_abs_diff=diff,
            reproduced=reason is None,
            reason=reason,
            detail=detail,
            tolerance=tolerance,
            onnxruntime_version=ort.__version__,
        )

    try:
        current = registry.get(model, version)
    except ModelNotFoundError as exc:
        gone = "model_deleted" if model not in registry.names() else "version_deleted"
        return result(gone, f"{model}@{version} is no longer in {registry.root}: {exc}")
    except RegistryError as exc:
        return result("model_file_changed", str(exc))
    stored_sha = row.get("sha256")
    if stored_sha and stored_sha != current.sha256:
        return result(
            "sha_mismatch",
            f"{model}@{version} scored with model sha256 {stored_sha} but the registry now holds "
            f"{current.sha256} under that version",
        )
    features: Sequence[Mapping[str, Any]] = row["features"]
    stored_names = tuple(str(f["name"]) for f in features)
    if stored_names != current.contract.feature_names:
        return result(
            "contract_changed",
            f"stored features {list(stored_names)} differ from the contract of "
            f"{model}@{version}: {list(current.contract.feature_names)}",
        )
    if current.classes and tuple(current.classes) != classes:
        return result(
            "classes_changed",
            f"stored classes {list(classes)} differ from {model}@{version}'s "
            f"{list(current.classes)}",
        )
    values = np.array(
        [math.nan if f["value"] is None else float(f["value"]) for f in features], dtype=np.float64
    )
    scorer = scorer or _scorer_for(registry)
    out = scorer.score_one(ScoreRequest(str(row["request_id"]), model, version, values))
    if isinstance(out, ScoreError):
        reason = "model_file_changed" if out.reason == "unsafe_model" else "score_failed"
        return result(reason, f"{out.reason}: {out.detail}")
    probs = tuple(float(p) for p in out.probabilities)
    if out.classes != classes or len(probs) != len(stored_probs):
        return result(
            "classes_changed",
            f"the model now scores classes {list(out.classes)}, stored {list(classes)}",
            out.label,
            probs,
        )
    diff = max((abs(a - b) for a, b in zip(probs, stored_probs, strict=True)), default=0.0)
    if out.label != row["label"]:
        return result(
            "label_differs",
            f"re-scored label {out.label!r}, stored {row['label']!r}",
            out.label,
            probs,
            diff,
        )
    if diff > tolerance:
        return result(
            "probabilities_differ",
            f"largest probability difference {diff:.3g} exceeds the tolerance {tolerance:g}",
            out.label,
            probs,
            diff,
        )
    detail = "bit-identical" if diff == 0.0 else f"within tolerance {tolerance:g}"
    return result(None, detail, out.label, probs, diff)


def explain_request(
    store: str | os.PathLike[str],
    request_id: str,
    registry: ModelRegistry | str | os.PathLike[str],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
) -> tuple[Explanation, ...]:
    """Explain every stored variant of `request_id` (answer first); empty when not stored."""
    if not isinstance(registry, ModelRegistry):
        registry = ModelRegistry(registry)
    rows = read_predictions(store, request_id).to_pylist()
    rows.sort(key=lambda r: (r["role"] != "answer", str(r["variant"]), str(r["version"])))
    if not rows:
        return ()
    scorer = _scorer_for(registry)
    return tuple(explain(r, registry, scorer=scorer, tolerance=tolerance) for r in rows)
