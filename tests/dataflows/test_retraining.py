"""Retraining on live outcomes: the training set from the stores, the candidate as a shadow,
its comparison with the live model on the same requests, and promotion."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamml.dataflows.outcomes import OutcomesFlowConfig
from streamml.dataflows.predict import RequestsConfig
from streamml.onnx_models import ModelRegistry
from streamml.onnx_models.speedtests import OutcomeConfig, RequestGeneratorConfig, generate_outcomes
from streamml.state.outcomes import labelled_rows, read_outcomes
from streamml.state.predictions import read_predictions

from streamml.retraining import auto_promote, compare, retrain
from tests.predict_support import MODEL, run_outcome_flow, run_predict_flow

NOW = 1_790_000_000_000
HOUR = 3_600_000


def scored_and_joined(tmp: Path, registry, telemetry, n: int, seed: int, now: int) -> Path:
    gen = RequestGeneratorConfig(requests=n, accounts=4000, seed=seed, now_ms=now, span_ms=HOUR)
    sub = tmp / f"run-{seed}"
    config = run_predict_flow(
        sub,
        registry,
        RequestsConfig(kind="generate", generator=gen),
        state_dir=tmp / "state",
        prediction_store=tmp / "store",
        telemetry_url=telemetry.url,
    )
    path = sub / "outcomes.jsonl"
    outcomes = generate_outcomes(gen, OutcomeConfig(max_delay_ms=HOUR, missing_rate=0.05))
    import orjson

    path.write_bytes(b"".join(orjson.dumps(o) + b"\n" for o in outcomes))
    run_outcome_flow(OutcomesFlowConfig(prediction_store=config.store, paths=(str(path),)))
    return config.store


def test_labelled_rows_are_the_logged_features_and_the_outcomes(
    tmp_path: Path, registry, telemetry
) -> None:
    store = scored_and_joined(tmp_path, registry, telemetry, 600, 21, NOW)
    live = registry.live(MODEL)
    rows = labelled_rows(store, MODEL, live.feature_names)
    preds = {
        r["request_id"]: r for r in read_predictions(store).to_pylist() if r["role"] == "answer"
    }
    outcomes = {r["request_id"]: r["outcome"] for r in read_outcomes(store).to_pylist()}
    assert len(rows.y) == len(outcomes) > 500
    for i, rid in enumerate(rows.request_ids):
        logged = {f["name"]: f["value"] for f in preds[rid]["features"]}
        assert rows.X[i].tolist() == [logged[n] for n in live.feature_names]
        assert rows.y[i] == outcomes[rid]
        assert rows.logged_labels[i] == preds[rid]["label"]
    assert np.all(np.diff(rows.request_ts) >= 0)
    assert rows.fingerprint() == labelled_rows(store, MODEL, live.feature_names).fingerprint()
    cut = int(rows.request_ts[len(rows.y) // 2])
    early = labelled_rows(store, MODEL, live.feature_names, until=cut)
    late = labelled_rows(store, MODEL, live.feature_names, since=cut)
    assert len(early.y) + len(late.y) == len(rows.y)


def test_retrain_registers_a_shadow_with_its_lineage_then_promotion(
    tmp_path: Path, registry: ModelRegistry, telemetry
) -> None:
    registry.route(MODEL, shadow=[])
    store = scored_and_joined(tmp_path, registry, telemetry, 2500, 31, NOW)
    parent = registry.live(MODEL)
    result = retrain(registry.root, store, MODEL, estimators=20)
    new = registry.get(MODEL, result.version)
    assert new.stage == "shadow" and registry.routing(MODEL).shadow == (result.version,)
    lineage = new.provenance["lineage"]
    assert lineage["parent"] == parent.version and lineage["parent_sha256"] == parent.sha256
    assert (
        lineage["training_set_sha256"]
        == labelled_rows(store, MODEL, parent.feature_names).fingerprint()
    )
    assert lineage["rows"] == result.rows and lineage["holdout_rows"] == result.holdout_rows
    assert set(lineage["feature_versions"]) == set(parent.feature_names)
    assert lineage["code_version"]
    assert new.provenance["metrics"]["accuracy"] == pytest.approx(result.metrics["accuracy"])
    assert new.contract == parent.contract
    # Later requests are scored by both; the comparison counts them on the same requests.
    store = scored_and_joined(tmp_path, registry, telemetry, 1500, 32, NOW + 2 * HOUR)
    [c] = compare(store, MODEL, since=NOW + HOUR)
    assert c.shadow == result.version and c.scored == 1500
    answers = {
        r["request_id"]: r["label"]
        for r in read_predictions(store).to_pylist()
        if r["role"] == "answer" and r["request_ts"].timestamp() * 1000 >= NOW + HOUR
    }
    shadows = {
        r["request_id"]: r["label"]
        for r in read_predictions(store).to_pylist()
        if r["role"] == "shadow" and r["request_ts"].timestamp() * 1000 >= NOW + HOUR
    }
    assert c.agreement == pytest.approx(np.mean([answers[k] == shadows[k] for k in answers]))
    assert 1300 < c.outcomes <= 1500
    # A margin no shadow reaches promotes nothing; one it reaches promotes it.
    assert auto_promote(registry.root, store, MODEL, margin=1.1, min_outcomes=10) is None
    assert registry.live(MODEL).version == parent.version
    best = auto_promote(registry.root, store, MODEL, margin=c.gain, min_outcomes=10)
    assert best is not None and registry.live(MODEL).version == result.version


def test_retrain_refuses_without_outcomes(tmp_path: Path, registry) -> None:
    (tmp_path / "store").mkdir()
    with pytest.raises(ValueError, match="run the outcome join"):
        retrain(registry.root, tmp_path / "store", MODEL)
