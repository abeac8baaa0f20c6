"""The lifecycle end to end: a change in the world, retraining into shadow, promotion."""

from __future__ import annotations

from pathlib import Path

from streamml.onnx_models import ModelRegistry
from streamml.onnx_models.speedtests import FIRMWARE_EFFECT, RequestGeneratorConfig
from streamml.onnx_models.speedtests import generate_requests as requests_of

from streamml.lifecycle import run_lifecycle


def test_the_firmware_rollout_changes_the_requests_from_its_time_on() -> None:
    base = RequestGeneratorConfig(requests=2000, accounts=500, seed=3, span_ms=2 * 3_600_000)
    drift_at = base.now_ms - 3_600_000
    plain = requests_of(base).requests
    drifted = requests_of(RequestGeneratorConfig(**{
        **{f: getattr(base, f) for f in base.__dataclass_fields__}, "drift_at_ms": drift_at,
    })).requests  # fmt: skip
    before = [(a, b) for a, b in zip(plain, drifted, strict=True) if a["ts"] < drift_at]
    after = [(a, b) for a, b in zip(plain, drifted, strict=True) if a["ts"] >= drift_at]
    assert before and after
    assert all(a == b for a, b in before)
    changed = [b for a, b in after if a != b]
    assert 0.35 < len(changed) / len(after) < 0.65  # half the modems got the firmware
    for a, b in after:
        if a != b:
            delta = b["context"]["latency_ms"] - a["context"]["latency_ms"]
            assert abs(delta - FIRMWARE_EFFECT["latency_ms"]) < 1e-6


def test_drift_is_seen_learned_and_promoted(tmp_path: Path) -> None:
    days = run_lifecycle(tmp_path, requests=900, accounts=5000, show=lambda _line: None)
    d1, d2, d3, d4 = days
    assert d1.answered_by == d2.answered_by == d3.answered_by
    assert d2.realised_accuracy < d1.realised_accuracy - 0.15
    # Before any outcome, the inputs are seen drifting: the packet loss the firmware adds.
    assert d2.psi["packet_loss_pct"] > max(0.25, 3 * d1.psi["packet_loss_pct"])
    assert d2.top_drift[0][0] in ("packet_loss_pct", "download_ratio", "latency_ms")
    assert d3.shadow is not None and d3.shadow_accuracy > d3.realised_accuracy + 0.15
    assert d4.answered_by == d3.shadow
    assert d4.realised_accuracy > d2.realised_accuracy + 0.15
    registry = ModelRegistry(tmp_path / "models")
    lineage = registry.get("speedtest-triage", d4.answered_by).provenance["lineage"]
    assert lineage["parent"] == d1.answered_by
    assert all(f.outcomes > 700 for f in days)
