"""Random prediction and outcome stores for the monitoring tests, written with the real writers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from streamml.state.outcomes import OutcomeRecord, OutcomeWriter
from streamml.state.predictions import (
    FEATURE_STATUSES,
    FeatureRecord,
    PredictionRecord,
    PredictionWriter,
)

__all__ = ["CLASSES_BY_VERSION", "T0", "random_reference", "write_random_store"]

T0 = 1_700_000_000_000
"""A UTC epoch-ms time the generated requests start from."""
CLASSES_BY_VERSION = {"1": ["modem", "network", "wifi"], "2": ["no", "yes"]}
"""The classes of each generated version (two versions with different class counts)."""
FEATURES = ("latency_ms", "signal_errors_24h")


def random_reference(rng: np.random.Generator) -> dict[str, Any]:
    """A training reference over `FEATURES` with random edges (some features may be absent)."""
    features = {}
    for name in FEATURES[: int(rng.integers(1, len(FEATURES) + 1))]:
        edges = sorted(set(np.round(rng.normal(50, 20, int(rng.integers(0, 6))), 1).tolist()))
        shares = rng.dirichlet(np.ones(len(edges) + 1)).tolist()
        features[name] = {"edges": edges, "shares": shares, "missing_share": 0.0}
    return {"bins": 10, "rows": 100, "features": features}


def _probabilities(rng: np.random.Generator, k: int) -> list[float]:
    kind = rng.integers(0, 4)
    if kind == 0:  # exact ECE bin boundaries and ties
        p = rng.integers(0, 11, k).astype(float)
        if p.sum() == 0:
            p[0] = 1.0
        return (p / p.sum()).tolist()
    if kind == 1:
        p = np.zeros(k)
        p[rng.integers(0, k)] = 1.0
        return p.tolist()
    return rng.dirichlet(np.ones(k) * 0.7).tolist()


def write_random_store(
    root: Path, rng: np.random.Generator, n_requests: int, *, span_ms: int = 3 * 86_400_000
) -> None:
    """Write `n_requests` requests, each scored by one to three variants, and their outcomes."""
    pw = PredictionWriter(root, "test/1", rows_per_flush=int(rng.integers(1, 50)))
    ow = OutcomeWriter(root, "test/1", rows_per_flush=int(rng.integers(1, 50)))
    variants = [("1", "live", "answer"), ("1", "b", "shadow"), ("2", "shadow-2", "shadow")]
    for i in range(n_requests):
        ts = T0 + int(rng.integers(0, span_ms))
        features = []
        for name in FEATURES:
            if rng.random() < 0.15:
                continue
            value = None if rng.random() < 0.2 else float(np.round(rng.normal(50, 25), 1))
            status = str(rng.choice(FEATURE_STATUSES))
            features.append(FeatureRecord(name, value, ts - 1000, "v1", status))
        has_outcome = rng.random() < 0.7
        chosen = [v for v in variants if rng.random() < 0.7] or variants[:1]
        for version, variant, role in chosen:
            classes = CLASSES_BY_VERSION[version]
            p = _probabilities(rng, len(classes))
            label = classes[int(np.argmax(p))] if rng.random() < 0.9 else str(rng.choice(classes))
            if rng.random() < 0.03:
                label = "other"
            rec = PredictionRecord(
                f"r{i}", "triage", version, variant, role, f"a{i % 7}", ts, label, p, classes,
                features, "sha", 1, ts + 5,
            )  # fmt: skip
            pw.append(rec)
            if has_outcome:
                outcome = str(
                    rng.choice([*classes, "unseen"], p=[0.9 / len(classes)] * len(classes) + [0.1])
                )
                ow.append(
                    OutcomeRecord(
                        rec.request_id,
                        rec.model,
                        version,
                        variant,
                        role,
                        rec.account,
                        ts,
                        label,
                        p,
                        classes,
                        1,
                        outcome,
                        ts + 86_400_000,
                    )
                )
    pw.close()
    ow.close()
