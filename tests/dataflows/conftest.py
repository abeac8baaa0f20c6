"""Fixtures of the prediction flow tests: a registry with three triage versions, telemetry."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from streamml.onnx_models import ModelRegistry, ensure_demo_registry, triage_contract
from streamml.onnx_models.training import train_and_export

from streamml.telemetry import TelemetryConfig
from streamml.telemetry_process import TelemetryProcess, start_telemetry_process
from tests.predict_support import MODEL


@pytest.fixture(scope="session")
def registry_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with the bundled model as v1 (live) and two small retrained ones, v2 and v3."""
    base = tmp_path_factory.mktemp("models")
    root = base / "registry"
    ensure_demo_registry(root)
    registry = ModelRegistry(root)
    for version, seed in (("2", 11), ("3", 12)):
        _, exported = train_and_export(
            base / f"triage-{seed}.onnx",
            version=version,
            rows=2000,
            seed=seed,
            n_estimators=8,
            max_depth=2,
        )
        registry.register(exported.path, contract=triage_contract(), name=MODEL)
    return root


@pytest.fixture
def registry(tmp_path: Path, registry_template: Path) -> ModelRegistry:
    """A private copy of the template registry."""
    shutil.copytree(registry_template, tmp_path / "models")
    return ModelRegistry(tmp_path / "models")


@pytest.fixture(scope="session")
def telemetry() -> Iterator[TelemetryProcess]:
    """A quick, reliable telemetry service in its own process."""
    with start_telemetry_process(
        TelemetryConfig(latency_ms=2, jitter_ms=1, failure_rate=0.0, seed=7)
    ) as proc:
        yield proc
