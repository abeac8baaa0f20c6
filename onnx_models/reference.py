"""A model version's training reference: per input feature, how its training data was spread.

Live monitoring compares the feature values a version scores against the values it was trained
on (population stability index, PSI). The reference holds, per feature, the bin edges (the
deciles of the training data, duplicates dropped) and the share of training rows in each bin.
Bins are closed on the right: bin 0 is ``(-inf, edges[0]]``, bin i is ``(edges[i-1],
edges[i]]``, the last is ``(edges[-1], inf)``; so ``numpy.searchsorted(edges, x, "left")``
gives a value's bin. Missing (NaN) training values have their own share, `missing_share`.

JSON form (stored in the exported model's metadata as `streamml.training_reference` and in the
registry manifest as `training_reference`):

```json
{"bins": 10, "rows": 16000,
 "features": {"latency_ms": {"edges": [12.5, ...], "shares": [0.1, ...], "missing_share": 0.0}}}
```
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["REFERENCE_BINS", "bin_index", "training_reference", "validate_reference"]

REFERENCE_BINS = 10
"""Quantile bins per feature (deciles)."""


def bin_index(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Return the bin of each value (right-closed bins over `edges`); NaN gets ``len(edges)+1``."""
    out = np.searchsorted(edges, values, side="left")
    out[np.isnan(values)] = len(edges) + 1
    return out


def training_reference(
    data: np.ndarray, feature_names: Sequence[str], bins: int = REFERENCE_BINS
) -> dict[str, Any]:
    """Return the JSON-ready reference of a training matrix (rows x `feature_names`)."""
    X = np.asarray(data, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] != len(feature_names) or X.shape[0] == 0:
        raise ValueError(
            f"expected a non-empty matrix with {len(feature_names)} columns, got shape {X.shape}"
        )
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    qs = np.arange(1, bins) / bins
    features: dict[str, Any] = {}
    for j, name in enumerate(feature_names):
        col = X[:, j]
        present = col[~np.isnan(col)]
        edges = np.unique(np.quantile(present, qs)) if present.size else np.empty(0)
        counts = np.bincount(bin_index(edges, col), minlength=len(edges) + 2)
        features[str(name)] = {
            "edges": edges.tolist(),
            "shares": (counts[: len(edges) + 1] / len(col)).tolist(),
            "missing_share": float(counts[len(edges) + 1] / len(col)),
        }
    return {"bins": bins, "rows": int(X.shape[0]), "features": features}


def validate_reference(raw: Any) -> dict[str, Any]:
    """Check the JSON form of a reference; return it, or raise `ValueError` saying what is wrong."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("features"), Mapping):
        raise ValueError(f'expected {{"bins": n, "rows": n, "features": {{...}}}}, got {raw!r:.80}')
    for name, f in raw["features"].items():
        edges, shares = f.get("edges"), f.get("shares")
        if not isinstance(edges, list) or not isinstance(shares, list):
            raise ValueError(f"reference feature {name!r}: edges and shares must be lists")
        if len(shares) != len(edges) + 1 or sorted(edges) != edges:
            raise ValueError(
                f"reference feature {name!r}: expected increasing edges and one share more than "
                f"edges, got {len(edges)} edges and {len(shares)} shares"
            )
    return dict(raw)
