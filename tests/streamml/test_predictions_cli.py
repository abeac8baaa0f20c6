from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import orjson
import pytest
from streamml.onnx_models import ModelRegistry, ensure_demo_registry, generate_speedtests
from streamml.operators.scoring import Scorer, ScoreRequest, ScoringConfig
from streamml.state.predictions import FeatureRecord, PredictionRecord, PredictionWriter

from streamml.cli import main

T0 = 1_735_689_600_000


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, str]:
    reg = tmp_path / "reg"
    live = ensure_demo_registry(reg)
    registry = ModelRegistry(reg)
    registry.register(
        live.path, contract=live.contract, name=live.name, version="2", registered_by="test"
    )
    registry.route(live.name, shadow=["2"])
    scorer = Scorer(ScoringConfig(registry_dir=reg))
    X = np.asarray(generate_speedtests(5, seed=1).X, dtype=np.float64)
    writer = PredictionWriter(tmp_path / "store", "p1", writer_id="w0")
    for i, row in enumerate(X):
        for version, variant, role in (("1", "live", "answer"), ("2", "shadow:2", "shadow")):
            pred = scorer.score_one(ScoreRequest(f"r{i}", live.name, version, row))
            assert not hasattr(pred, "reason"), pred
            writer.append(
                PredictionRecord(
                    request_id=f"r{i}",
                    model=live.name,
                    version=version,
                    variant=variant,
                    role=role,
                    account=f"a{i}",
                    request_ts=T0 + i,
                    label=pred.label,
                    probabilities=pred.probabilities,
                    classes=pred.classes,
                    features=tuple(
                        FeatureRecord(n, float(v), T0 - 10, "v1", "fresh")
                        for n, v in zip(live.feature_names, row, strict=True)
                    ),
                    sha256=live.sha256,
                    metadata_revision=registry.revision(),
                    scored_at=T0 + i + 2,
                )
            )
    writer.close()
    return str(tmp_path / "store"), str(reg)


def argv(store: tuple[str, str], rid: str) -> list[str]:
    return ["predictions", "explain", rid, "--prediction-store", store[0], "--registry", store[1]]


def test_explain_prints_stored_and_rescored_side_by_side(
    store: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv(store, "r2")) == 0
    out = capsys.readouterr().out
    assert "request r2: model speedtest-triage, account a2" in out
    assert "live (answer) speedtest-triage@1: reproduced, bit-identical" in out
    assert "shadow:2 (shadow) speedtest-triage@2: reproduced" in out
    assert "STORED" in out and "RESCORED" in out and "signal_errors_24h" in out
    assert "2/2 variants reproduced" in out


def test_explain_json_and_a_deleted_version(
    store: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv(store, "r0"), "--json"]) == 0
    data = orjson.loads(capsys.readouterr().out)
    assert data["reproduced"] is True and len(data["variants"]) == 2
    for v in data["variants"]:
        assert v["stored"] == v["rescored"] and v["exact"] is True
    shutil.rmtree(Path(store[1]) / "speedtest-triage" / "versions" / "2")
    assert main([*argv(store, "r0"), "--json"]) == 1
    data = orjson.loads(capsys.readouterr().out)
    shadow = data["variants"][1]
    assert shadow["reason"] == "version_deleted" and shadow["rescored"] is None
    assert main(argv(store, "r0")) == 1
    out = capsys.readouterr().out
    assert "NOT reproduced: version_deleted" in out and "1/2 variants reproduced" in out


def test_unknown_request_and_store_exit_2(
    store: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv(store, "nope")) == 2
    assert "no stored prediction with request_id 'nope'" in capsys.readouterr().err
    missing = (str(tmp_path / "absent"), store[1])
    assert main(argv(missing, "r0")) == 2
    assert "is not a directory" in capsys.readouterr().err
