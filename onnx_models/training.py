"""Train, evaluate and export the speed-test triage model (wifi / modem / network)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from streamml.onnx_models.contract import (
    FeatureContract,
    FeatureSource,
    FeatureSpec,
    MissingPolicy,
)
from streamml.onnx_models.data import CLASSES, FEATURE_NAMES, TriageData, generate_speedtests
from streamml.onnx_models.exporter import ExportedModel, export

__all__ = [
    "TELEMETRY_SERVICE",
    "TRAINERS",
    "TRIAGE_MODEL_NAME",
    "TrainedTriage",
    "evaluate",
    "make_classifier",
    "train_and_export",
    "train_triage",
    "triage_contract",
    "triage_split",
]

TRIAGE_MODEL_NAME = "speedtest-triage"
"""Registry name of the speed-test triage model."""

TELEMETRY_SERVICE = "telemetry"
"""Name of the on-demand device-telemetry service in the triage contract."""

TRAINERS: tuple[str, ...] = ("sklearn", "lightgbm")
"""Libraries `train_triage` can fit the triage classifier with."""

_MINUTE_MS = 60_000
_DAY_MS = 24 * 60 * _MINUTE_MS


@dataclass(frozen=True)
class TrainedTriage:
    """A fitted triage classifier with its data split and held-out metrics."""

    model: Any
    data: TriageData
    X_train: np.ndarray
    y_train: np.ndarray
    X_holdout: np.ndarray
    y_holdout: np.ndarray
    metrics: dict[str, float]


def triage_contract() -> FeatureContract:
    """Return the feature contract of the triage model: sources, TTLs and missing policies.

    The rolling signal-error count comes from the online store; the speed test's own measures
    from the request context (they are as old as the request, so their TTL is a day); the home
    network from the `telemetry` service (`streamml telemetry serve`): the weakest device's RSSI
    and the noise at that device, the number of devices, the modem's uptime and its node's health.
    """
    online = FeatureSource.online
    ctx = FeatureSource.request

    def telemetry(expression: str) -> FeatureSource:
        return FeatureSource.on_demand(TELEMETRY_SERVICE, expression)

    specs = [
        FeatureSpec(
            "signal_errors_24h", 5 * _MINUTE_MS, MissingPolicy.default(0.0), source=online()
        ),
        FeatureSpec(
            "download_ratio", _DAY_MS, MissingPolicy.reject(), source=ctx("download_ratio")
        ),
        FeatureSpec("upload_ratio", _DAY_MS, MissingPolicy.reject(), source=ctx("upload_ratio")),
        FeatureSpec("latency_ms", _DAY_MS, MissingPolicy.reject(), source=ctx("latency_ms")),
        FeatureSpec(
            "packet_loss_pct", _DAY_MS, MissingPolicy.default(0.0), source=ctx("packet_loss_pct")
        ),
        FeatureSpec(
            "wifi_rssi_dbm",
            15 * _MINUTE_MS,
            MissingPolicy.default(-60.0),
            source=telemetry("min(devices[].rssi_dbm)"),
        ),
        FeatureSpec(
            "wifi_noise_dbm",
            15 * _MINUTE_MS,
            MissingPolicy.default(-92.0),
            source=telemetry("min_by(devices, &rssi_dbm).noise_dbm"),
        ),
        FeatureSpec(
            "connected_devices",
            15 * _MINUTE_MS,
            MissingPolicy.default(8.0),
            source=telemetry("length(devices)"),
        ),
        FeatureSpec(
            "modem_uptime_h",
            60 * _MINUTE_MS,
            MissingPolicy.default(24.0),
            source=telemetry("modem.uptime_h"),
        ),
        FeatureSpec(
            "node_health",
            5 * _MINUTE_MS,
            MissingPolicy.default(1.0),
            source=telemetry("node.health"),
        ),
    ]
    return FeatureContract(tuple(specs), allow_nan=False)


def evaluate(model: Any, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Return accuracy, majority-class baseline, macro F1, log loss and per-class recall."""
    from sklearn.metrics import accuracy_score, f1_score, log_loss, recall_score

    pred = model.predict(X)
    proba = model.predict_proba(X)
    _, counts = np.unique(y, return_counts=True)
    metrics = {
        "rows": float(len(y)),
        "accuracy": float(accuracy_score(y, pred)),
        "majority_baseline": float(counts.max() / counts.sum()),
        "macro_f1": float(f1_score(y, pred, average="macro")),
        "log_loss": float(log_loss(y, proba, labels=list(model.classes_))),
    }
    recalls = recall_score(y, pred, average=None, labels=list(CLASSES), zero_division=0)
    for cls, r in zip(CLASSES, recalls, strict=True):
        metrics[f"recall_{cls}"] = float(r)
    return metrics


def triage_split(
    rows: int, seed: int, holdout_fraction: float = 0.2
) -> tuple[TriageData, np.ndarray, np.ndarray]:
    """Generate `rows` speed tests from `seed`; return them and the training and held-out rows."""
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    data = generate_speedtests(rows, seed)
    n_hold = max(1, round(rows * holdout_fraction))
    if rows - n_hold < 10:
        raise ValueError(f"rows={rows} is too few to train; use at least 50")
    order = np.random.default_rng(seed + 1).permutation(rows)
    return data, order[n_hold:], order[:n_hold]


def make_classifier(
    trainer: str, *, n_estimators: int, max_depth: int, learning_rate: float, seed: int
) -> Any:
    """Return an unfitted classifier of `trainer`'s library (one of `TRAINERS`)."""
    if trainer == "sklearn":
        from sklearn.ensemble import GradientBoostingClassifier

        return GradientBoostingClassifier(
            n_estimators=n_estimators,
            max_depth=max_depth,
            learning_rate=learning_rate,
            random_state=seed,
        )
    if trainer == "lightgbm":
        try:
            from lightgbm import LGBMClassifier
        except ImportError as exc:
            raise ValueError(
                f"trainer 'lightgbm' needs lightgbm: pip install 'streamml[train]' ({exc})"
            ) from exc
        # One thread: the fit is small, and the same seed then gives the same trees.
        return LGBMClassifier(
            n_estimators=n_estimators,
            max_depth=max_depth,
            num_leaves=2**max_depth,
            learning_rate=learning_rate,
            random_state=seed,
            n_jobs=1,
            verbose=-1,
        )
    raise ValueError(f"trainer must be one of {list(TRAINERS)}, got {trainer!r}")


def train_triage(
    rows: int = 20_000,
    seed: int = 7,
    *,
    n_estimators: int = 50,
    max_depth: int = 3,
    learning_rate: float = 0.2,
    holdout_fraction: float = 0.2,
    trainer: str = "sklearn",
) -> TrainedTriage:
    """Generate `rows` speed tests from `seed`, fit a classifier and evaluate it.

    `trainer` picks the library: `sklearn` (GradientBoostingClassifier) or `lightgbm`
    (LGBMClassifier with at most 2**max_depth leaves per tree; needs `streamml[train]`).
    """
    model = make_classifier(
        trainer,
        n_estimators=n_estimators,
        max_depth=max_depth,
        learning_rate=learning_rate,
        seed=seed,
    )
    data, train, hold = triage_split(rows, seed, holdout_fraction)
    X_train, y_train = data.X[train], data.y[train]
    model.fit(X_train, y_train)
    metrics = evaluate(model, data.X[hold], data.y[hold])
    return TrainedTriage(
        model=model,
        data=data,
        X_train=X_train,
        y_train=y_train,
        X_holdout=data.X[hold],
        y_holdout=data.y[hold],
        metrics=metrics,
    )


def train_and_export(
    out: str | os.PathLike[str],
    *,
    name: str = TRIAGE_MODEL_NAME,
    version: str | None = None,
    rows: int = 20_000,
    seed: int = 7,
    n_estimators: int = 50,
    max_depth: int = 3,
    created_at: datetime | None = None,
    created_by: str = "streamml.onnx_models.training",
    trainer: str = "sklearn",
) -> tuple[TrainedTriage, ExportedModel]:
    """Train the triage model and export it to `out` (file or directory), parity-checked."""
    trained = train_triage(
        rows, seed, n_estimators=n_estimators, max_depth=max_depth, trainer=trainer
    )
    exported = export(
        trained.model,
        FEATURE_NAMES,
        name,
        X_holdout=trained.X_holdout,
        version=version,
        metrics=trained.metrics,
        training_data=trained.X_train,
        out=out,
        created_at=created_at,
        created_by=created_by,
    )
    return trained, exported
