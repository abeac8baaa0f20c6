"""Retraining on live outcomes, shadow comparison and promotion.

`retrain` builds a training set from what the live model saw and what really happened: every
answered request of a time range that got an outcome, with its features as scored (request
context, online and on-demand values, defaults, exactly as logged in the prediction store) and
the outcome as label. It trains a new model on the earlier 80% of the rows (by request time),
evaluates it and the answering model on the later 20%, exports it to ONNX with the parity
check, registers it with its lineage (training set fingerprint, feature versions, code version,
parent version, offline metrics) and routes it as a shadow: scored on the same requests as the
live model, logged, never answered.

`compare` sets each shadow beside the answering variants on the same requests: accuracy on the
requests with an outcome, and agreement on every request scored. `auto_promote` promotes a
shadow that beats the answering model by a margin over enough outcomes.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "Comparison",
    "RetrainResult",
    "auto_promote",
    "compare",
    "retrain",
]

_MIN_ROWS = 50


@dataclass(frozen=True)
class RetrainResult:
    """A retrained candidate: its registry version, data sizes, metrics and lineage."""

    name: str
    version: str
    parent: str
    rows: int
    holdout_rows: int
    metrics: dict[str, float]
    parent_holdout_accuracy: float
    lineage: dict[str, Any] = field(default_factory=dict)


def retrain(
    registry_dir: str | os.PathLike[str],
    prediction_store: str | os.PathLike[str],
    name: str,
    *,
    since: int | None = None,
    until: int | None = None,
    trainer: str = "sklearn",
    seed: int = 7,
    estimators: int = 50,
    depth: int = 3,
    holdout_fraction: float = 0.2,
    shadow: bool = True,
    actor: str = "streamml models retrain",
) -> RetrainResult:
    """Retrain `name` on its answered requests in ``[since, until)`` and their outcomes.

    The new version has the live version's feature contract and is registered as a candidate
    and, with `shadow`, added to the shadows. Raises `ValueError` when there is no live version
    or too few labelled rows.
    """
    from streamml.onnx_models import ModelRegistry, export
    from streamml.onnx_models.training import evaluate, make_classifier
    from streamml.state.outcomes import labelled_rows

    registry = ModelRegistry(registry_dir)
    parent = registry.live(name)
    if parent is None:
        raise ValueError(f"{name} has no live version to retrain from")
    data = labelled_rows(prediction_store, name, parent.feature_names, since=since, until=until)
    n = len(data.y)
    if n < _MIN_ROWS:
        raise ValueError(
            f"{name}: only {n} answered requests with an outcome in the range (at least "
            f"{_MIN_ROWS} needed); run the outcome join (streamml run outcomes) or widen "
            "--since/--until"
        )
    if len(set(data.y.tolist())) < 2:
        raise ValueError(f"{name}: every outcome in the range is {data.y[0]!r}; nothing to learn")
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    cut = n - max(1, round(n * holdout_fraction))
    X_train, y_train = data.X[:cut], data.y[:cut]
    X_hold, y_hold = data.X[cut:], data.y[cut:]
    model = make_classifier(
        trainer, n_estimators=estimators, max_depth=depth, learning_rate=0.2, seed=seed
    )
    model.fit(X_train, y_train.astype(str))
    metrics = evaluate(model, X_hold, y_hold.astype(str))
    parent_accuracy = float(np.mean(data.logged_labels[cut:] == y_hold))
    metrics["answering_model_accuracy"] = parent_accuracy
    version = registry.next_version(name)
    lineage = {
        "training_set_sha256": data.fingerprint(),
        "rows": n,
        "train_rows": cut,
        "holdout_rows": n - cut,
        "dropped_incomplete": data.dropped_incomplete,
        "request_ts_range": [int(data.request_ts[0]), int(data.request_ts[-1])],
        "since": since,
        "until": until,
        "feature_versions": data.feature_versions,
        "parent": parent.version,
        "parent_sha256": parent.sha256,
        "trainer": trainer,
        "code_version": package_version("streamml"),
        "source": "prediction store answers joined to outcomes",
    }
    with tempfile.TemporaryDirectory(prefix="streamml-retrain-") as tmp:
        exported = export(
            model,
            parent.feature_names,
            name,
            X_holdout=X_hold,
            version=version,
            metrics=metrics,
            training_data=X_train,
            out=Path(tmp),
            created_by=actor,
        )
        registered = registry.register(
            exported.path,
            contract=parent.contract,
            name=name,
            version=version,
            registered_by=actor,
            lineage=lineage,
        )
    if shadow:
        routing = registry.routing(name)
        registry.route(name, shadow=[*routing.shadow, registered.version], actor=actor)
    return RetrainResult(
        name=name,
        version=registered.version,
        parent=parent.version,
        rows=n,
        holdout_rows=n - cut,
        metrics=metrics,
        parent_holdout_accuracy=parent_accuracy,
        lineage=lineage,
    )


@dataclass(frozen=True)
class Comparison:
    """A shadow version beside the answering variants, on the same requests."""

    shadow: str
    scored: int
    agreement: float
    outcomes: int
    answer_accuracy: float
    shadow_accuracy: float

    @property
    def gain(self) -> float:
        """Shadow accuracy minus answering accuracy on the same requests with outcomes."""
        return self.shadow_accuracy - self.answer_accuracy


def compare(
    prediction_store: str | os.PathLike[str],
    name: str,
    *,
    since: int | None = None,
    until: int | None = None,
) -> list[Comparison]:
    """Compare every shadow of `name` with what answered the same requests."""
    import pyarrow.compute as pc

    from streamml.state.outcomes import read_outcomes
    from streamml.state.predictions import read_predictions

    cols = ["request_id", "model", "version", "role", "request_ts", "label"]
    preds = read_predictions(prediction_store).select(cols)
    keep = pc.equal(preds.column("model"), name)
    ts = preds.column("request_ts").cast("int64")
    if since is not None:
        keep = pc.and_(keep, pc.greater_equal(ts, since))
    if until is not None:
        keep = pc.and_(keep, pc.less(ts, until))
    rows = preds.filter(keep).to_pylist()
    outcome_of = dict(
        zip(
            *(
                read_outcomes(prediction_store).column(c).to_pylist()
                for c in ("request_id", "outcome")
            ),
            strict=True,
        )
    )
    answers = {r["request_id"]: r["label"] for r in rows if r["role"] == "answer"}
    shadows: dict[str, list[tuple[str, str]]] = {}
    for r in rows:
        if r["role"] == "shadow" and r["request_id"] in answers:
            shadows.setdefault(r["version"], []).append((r["request_id"], r["label"]))
    out = []
    for version, pairs in sorted(shadows.items()):
        agree = sum(answers[rid] == label for rid, label in pairs)
        judged = [(rid, label) for rid, label in pairs if rid in outcome_of]
        n = len(judged)
        answer_ok = sum(answers[rid] == outcome_of[rid] for rid, _ in judged)
        shadow_ok = sum(label == outcome_of[rid] for rid, label in judged)
        out.append(
            Comparison(
                shadow=version,
                scored=len(pairs),
                agreement=agree / len(pairs),
                outcomes=n,
                answer_accuracy=answer_ok / n if n else float("nan"),
                shadow_accuracy=shadow_ok / n if n else float("nan"),
            )
        )
    return out


def auto_promote(
    registry_dir: str | os.PathLike[str],
    prediction_store: str | os.PathLike[str],
    name: str,
    *,
    margin: float = 0.02,
    min_outcomes: int = 500,
    actor: str = "streamml models promote --auto",
) -> Comparison | None:
    """Promote the shadow that beats the answering model by the most, if by `margin` or more.

    The gain is measured on the same requests, over at least `min_outcomes` outcomes; returns
    the promoted shadow's comparison, or None when no shadow qualifies.
    """
    from streamml.onnx_models import ModelRegistry

    eligible = [
        c
        for c in compare(prediction_store, name)
        if c.outcomes >= min_outcomes and c.gain >= margin
    ]
    if not eligible:
        return None
    best = max(eligible, key=lambda c: (c.gain, c.outcomes))
    ModelRegistry(registry_dir).promote(name, best.shadow, "live", actor=actor)
    return best
