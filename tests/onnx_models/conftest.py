from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from streamml.onnx_models import (
    FEATURE_NAMES,
    ExportedModel,
    ModelRegistry,
    ModelVersion,
    TrainedTriage,
    export,
    train_triage,
    triage_contract,
)

PINNED = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="session")
def trained() -> TrainedTriage:
    return train_triage(3000, seed=11, n_estimators=20, max_depth=3)


@pytest.fixture(scope="session")
def exported(trained: TrainedTriage, tmp_path_factory: pytest.TempPathFactory) -> ExportedModel:
    out = tmp_path_factory.mktemp("export") / "triage.onnx"
    return export(
        trained.model,
        FEATURE_NAMES,
        "speedtest-triage",
        X_holdout=trained.X_holdout,
        version="7",
        metrics=trained.metrics,
        training_data=trained.X_train,
        out=out,
        created_at=PINNED,
    )


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "registry")


@pytest.fixture
def registered(registry: ModelRegistry, exported: ExportedModel) -> ModelVersion:
    return registry.register(exported.path, contract=triage_contract())
