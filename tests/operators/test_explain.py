from __future__ import annotations

import shutil
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from streamml.onnx_models import (
    FEATURE_NAMES,
    ModelRegistry,
    export,
    train_triage,
    triage_contract,
)
from streamml.operators.explain import explain, explain_request
from streamml.operators.metadata import load_metadata
from streamml.operators.scoring import PredictionBatch, ScoreBatch, Scorer, ScoringConfig
from streamml.state.predictions import (
    FeatureRecord,
    PredictionRecord,
    PredictionWriter,
    read_predictions,
)

NAME = "triage"
PINNED = datetime(2025, 1, 1, tzinfo=UTC)
T0 = int(PINNED.timestamp() * 1000)
ROWS = 300


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("explain")
    trained = train_triage(1500, seed=9, n_estimators=10, max_depth=3)
    tree = export(
        trained.model,
        FEATURE_NAMES,
        NAME,
        X_holdout=trained.X_holdout,
        version="1",
        out=tmp / "tree.onnx",
        created_at=PINNED,
    )
    lin_model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    lin_model.fit(trained.X_train, trained.y_train)
    lin = export(
        lin_model,
        FEATURE_NAMES,
        NAME,
        X_holdout=trained.X_holdout,
        version="2",
        out=tmp / "lin.onnx",
        created_at=PINNED,
    )
    rng = np.random.default_rng(4)
    X = np.asarray(trained.X_holdout[:ROWS], dtype=np.float64)
    X = X * (1 + rng.normal(0, 1e-3, X.shape))
    return {"tree": tree.path, "lin": lin.path, "X": X}


def build_store(tmp_path: Path, models: dict[str, Any]) -> tuple[ModelRegistry, Path]:
    registry = ModelRegistry(tmp_path / "reg")
    registry.register(models["tree"], contract=triage_contract(), version="1")
    registry.register(models["lin"], contract=triage_contract(), version="2")
    registry.route(NAME, live="1", shadow=["2"])
    meta = load_metadata(registry)
    X: np.ndarray = models["X"]
    ids = [f"r{i}" for i in range(len(X))]
    accounts = [f"acct-{i}" for i in range(len(X))]
    scorer = Scorer(ScoringConfig(registry_dir=registry.root))
    entry = meta.model(NAME)
    assert entry is not None
    store = tmp_path / "store"
    writer = PredictionWriter(store, "test-pipeline", writer_id="w0", rows_per_flush=128)
    statuses = ["fresh", "stale", "fetched", "defaulted"]
    for info in entry.versions:
        out = scorer.score_batch([ScoreBatch(NAME, info.version, ids, X)])
        assert len(out) == 1 and isinstance(out[0], PredictionBatch)
        for i, pred in enumerate(out[0].rows()):
            sel = meta.select(NAME, accounts[i])
            assert sel is not None
            variant, role = next((v, r) for ver, v, r in sel.variants() if ver == info.version)
            writer.append(
                PredictionRecord(
                    request_id=pred.request_id,
                    model=NAME,
                    version=info.version,
                    variant=variant,
                    role=role,
                    account=accounts[i],
                    request_ts=T0 + i * 1000,
                    label=pred.label,
                    probabilities=pred.probabilities,
                    classes=pred.classes,
                    features=tuple(
                        FeatureRecord(n, float(X[i, j]), T0 - j, "v1", statuses[(i + j) % 4])
                        for j, n in enumerate(info.feature_names)
                    ),
                    sha256=info.sha256,
                    metadata_revision=meta.revision,
                    scored_at=T0 + i * 1000 + 5,
                )
            )
    writer.close()
    return registry, store


def test_explain_reproduces_every_stored_prediction(tmp_path: Path, models: dict[str, Any]) -> None:
    registry, store = build_store(tmp_path, models)
    rows = read_predictions(store).to_pylist()
    assert len(rows) == 2 * ROWS
    scorer = Scorer(ScoringConfig(registry_dir=registry.root))
    for row in rows:
        e = explain(row, registry, scorer=scorer)
        assert e.reproduced, e
        assert e.rescored_label == e.stored_label
        assert e.max_abs_diff is not None and e.max_abs_diff <= 1e-6
        if e.version == "1":
            assert e.exact and e.rescored_probabilities == e.stored_probabilities
    for i in (0, 17, ROWS - 1):
        found = explain_request(store, f"r{i}", registry)
        assert [(e.variant, e.role) for e in found] == [("live", "answer"), ("shadow:2", "shadow")]
        assert all(e.reproduced and e.request_id == f"r{i}" for e in found)
    assert explain_request(store, "absent", registry) == ()


def test_explain_says_why_it_cannot_reproduce(tmp_path: Path, models: dict[str, Any]) -> None:
    registry, store = build_store(tmp_path, models)
    rows = read_predictions(store, "r3").to_pylist()
    answer = next(r for r in rows if r["role"] == "answer")
    shadow = next(r for r in rows if r["role"] == "shadow")

    wrong_label = {**answer, "label": next(c for c in answer["classes"] if c != answer["label"])}
    assert explain(wrong_label, registry).reason == "label_differs"
    nudged = [p + 1e-3 for p in answer["probabilities"]]
    e = explain({**answer, "probabilities": nudged}, registry)
    assert e.reason == "probabilities_differ" and e.max_abs_diff == pytest.approx(1e-3, rel=1e-3)
    tiny = [p + 1e-8 for p in answer["probabilities"]]
    e = explain({**answer, "probabilities": tiny}, registry)
    assert e.reproduced and not e.exact
    renamed = [dict(f) for f in answer["features"]]
    renamed[0]["name"] = "other"
    assert explain({**answer, "features": renamed}, registry).reason == "contract_changed"
    missing = [dict(f) for f in answer["features"]]
    missing[1]["value"] = None
    e = explain({**answer, "features": missing}, registry)
    assert e.reason == "score_failed" and "NaN" in e.detail

    manifest = registry.root / NAME / "versions" / "1" / "manifest.json"
    original = manifest.read_bytes()
    data = orjson.loads(original)
    data["classes"] = list(reversed(data["classes"]))
    manifest.write_bytes(orjson.dumps(data))
    assert explain(answer, registry).reason == "classes_changed"
    manifest.write_bytes(original)
    assert explain(answer, registry).reproduced

    model_file = registry.root / NAME / "versions" / "1" / "model.onnx"
    model_file.write_bytes(model_file.read_bytes() + b"\x00")
    e = explain(answer, registry)
    assert e.reason == "model_file_changed" and "sha256 mismatch" in e.detail

    shutil.rmtree(registry.root / NAME / "versions" / "2")
    e = explain(shadow, registry)
    assert e.reason == "version_deleted" and not e.reproduced
    assert f"{NAME}@2 is no longer in" in e.detail and e.rescored_label is None

    registry.register(models["tree"], contract=triage_contract(), version="2")
    e = explain(shadow, registry)
    assert e.reason == "sha_mismatch" and shadow["sha256"] in e.detail

    shutil.rmtree(registry.root / NAME)
    assert explain(answer, registry).reason == "model_deleted"


def test_explanation_json_has_both_sides(tmp_path: Path, models: dict[str, Any]) -> None:
    registry, store = build_store(tmp_path, models)
    (e,) = [x for x in explain_request(store, "r0", registry) if x.role == "answer"]
    data = e.to_json()
    assert data["stored"]["label"] == data["rescored"]["label"]
    assert data["exact"] is True and data["reason"] is None and data["tolerance"] == 1e-6
    assert replace(e, max_abs_diff=1e-9).exact is False
