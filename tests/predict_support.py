"""Helpers of the prediction tests: run the flow in this process, read its JSON lines outputs."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import orjson
from bytewax.recovery import RecoveryConfig
from bytewax.testing import run_main
from streamml.dataflows.outcomes import OutcomesFlowConfig
from streamml.dataflows.outcomes import build_flow as build_outcome_flow
from streamml.dataflows.predict import PredictFlowConfig, RequestsConfig, build_flow
from streamml.onnx_models import ModelRegistry

from streamml.recovery import ensure_recovery_dir

MODEL = "speedtest-triage"


def run_predict_flow(
    tmp: Path, registry: ModelRegistry, requests: RequestsConfig, **kw
) -> PredictFlowConfig:
    """Run the prediction flow in this process with JSON lines outputs under `tmp`."""
    config = PredictFlowConfig(
        requests=requests,
        state_dir=kw.pop("state_dir", tmp / "state"),
        registry_dir=registry.root,
        predictions_out=tmp / "answers.jsonl",
        timeouts_out=tmp / "timeouts.jsonl",
        dead_letters_out=tmp / "dead.jsonl",
        stats_path=tmp / "stats.json",
        **kw,
    )
    run_main(build_flow(config))
    return config


def read_lines(path: Path) -> list[dict]:
    """Read a JSON lines file (empty when absent)."""
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def run_outcome_flow(config: OutcomesFlowConfig) -> OutcomesFlowConfig:
    """Run the outcome join flow in this process, with its recovery dir as the CLI runs it."""
    ensure_recovery_dir(config.recovery)
    recovery = RecoveryConfig(str(config.recovery), backup_interval=timedelta(0))
    run_main(build_outcome_flow(config), recovery_config=recovery)
    return config
