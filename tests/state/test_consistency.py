"""Training/serving consistency: the real features and prediction flows, checked and then skewed."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from bytewax.testing import run_main
from streamml.dataflows.features import FeaturesConfig, SourceInput
from streamml.dataflows.features import build_flow as features_flow
from streamml.dataflows.predict import PredictFlowConfig, RequestsConfig
from streamml.dataflows.predict import build_flow as predict_flow
from streamml.onnx_models import (
    FeatureContract,
    FeatureSource,
    FeatureSpec,
    MissingPolicy,
    ModelRegistry,
    bundled_model_path,
    triage_contract,
)
from streamml.onnx_models.speedtests import RequestGeneratorConfig
from streamml.operators.assembly import REQUEST_FEATURE_VERSION
from streamml.operators.sources import GeneratorConfig
from streamml.state.consistency import REQUEST_VERSION, verify_predictions
from streamml.state.definitions import (
    default_definitions,
    default_definitions_path,
    parse_definitions,
)
from streamml.state.predictions import PREDICTIONS_DIR, read_predictions

from streamml.generate import write_events, write_speed_tests

MODEL = "speedtest-triage"
ONLINE = {
    "signal_errors_24h": "signal_errors_24h",
    "packet_loss_pct": "packet_loss_pct_last",
    "wifi_rssi_dbm": "latency_ms_max_24h",
    "wifi_noise_dbm": "upload_ratio_min_7d",
    "connected_devices": "speed_tests_24h",
    "modem_uptime_h": "download_ratio_mean_7d",
}
"""The contract's features read from the online store, by the bundled feature they read: every
aggregation (count, mean, min, max, last), two sources, and names that differ from the
feature's (matched by version)."""


@dataclass(frozen=True)
class Served:
    root: Path
    store: Path
    history: Path


def _contract() -> FeatureContract:
    specs = []
    for spec in triage_contract().features:
        if spec.name in ONLINE:
            default = MissingPolicy.default(spec.on_missing.value or 0.0)
            spec = FeatureSpec(
                spec.name, spec.ttl_ms, default, source=FeatureSource.online(ONLINE[spec.name])
            )
        specs.append(spec)
    return FeatureContract(tuple(specs), allow_nan=False)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Served:
    """Bundled features over generated events, then generated requests scored with them.

    Requests span the last day of the events and the hour after them, so some are scored after
    every later event was applied (the flow ahead of them) and some after all their events.
    """
    root = tmp_path_factory.mktemp("served")
    gen = GeneratorConfig(events=20_000, accounts=300, seed=3, partitions=1)
    [errors] = write_events(root / "errors.csv", gen, fmt="csv")
    tests = write_speed_tests(root / "speed-tests.jsonl", replace(gen, events=3_000))
    config = FeaturesConfig(
        inputs=(
            SourceInput("signal_errors", "file", (str(errors),)),
            SourceInput("speed_tests", "file", (str(tests),)),
        ),
        state_dir=root / "state",
        history_dir=root / "history",
        settle_ms=0,
    )
    run_main(features_flow(config))
    registry = ModelRegistry(root / "models")
    version = registry.register(bundled_model_path(), contract=_contract(), name=MODEL)
    registry.promote(MODEL, version.version, "live")
    end = gen.start_ms + gen.span_ms
    requests = RequestGeneratorConfig(
        requests=400, accounts=300, seed=3, now_ms=end + 3_600_000, span_ms=86_400_000
    )
    predict = PredictFlowConfig(
        requests=RequestsConfig(kind="generate", generator=requests),
        state_dir=root / "state",
        registry_dir=registry.root,
        prediction_store=root / "predictions",
    )
    run_main(predict_flow(predict))
    return Served(root, root / "predictions", root / "history")


def _definitions() -> dict:
    return dict(default_definitions().features)


def test_every_served_online_value_is_explained(served: Served) -> None:
    report = verify_predictions(served.store, served.history, _definitions())
    assert report.predictions == report.requests == 400
    assert report.mismatched == 0, [m for c in report.features.values() for m in c.examples]
    assert report.version_mismatch == 0
    checks = report.features
    for name, feature in ONLINE.items():
        c = checks[name]
        assert c.definition == feature
        assert c.checked > 0 and c.mismatched == 0
        assert c.logged == 400
    assert sum(c.exact for c in checks.values()) > 0
    assert sum(c.lagged for c in checks.values()) > 0
    assert checks["download_ratio"].not_checkable == {"request": 400}
    assert checks["node_health"].not_checkable == {"defaulted": 400}
    # bounds on the request time select fewer requests
    table = read_predictions(served.store)
    times = sorted(table.column("request_ts").cast(pa.int64()).to_pylist())
    later = verify_predictions(served.store, served.history, _definitions(), since=times[200])
    assert later.requests == 200
    assert (
        verify_predictions(served.store, served.history, _definitions(), until=times[9]).requests
        == 10
    )


def _skew_copy(served: Served, target: Path, feature: str, by: float) -> int:
    """Copy the prediction store with `feature`'s online values moved by `by`; return how many."""
    shutil.copytree(served.store, target)
    moved = 0
    for path in sorted((target / PREDICTIONS_DIR).rglob("*.parquet")):
        table = pq.read_table(path, partitioning=None)
        rows = table.column("features").to_pylist()
        for features in rows:
            for f in features:
                if f["name"] == feature and f["status"] in ("fresh", "stale"):
                    f["value"] += by
                    moved += 1
        column = pa.array(rows, type=table.schema.field("features").type)
        table = table.set_column(table.schema.get_field_index("features"), "features", column)
        pq.write_table(table, path)
    return moved


def test_a_skewed_feature_is_caught_and_only_it(served: Served, tmp_path: Path) -> None:
    moved = _skew_copy(served, tmp_path / "skewed", "wifi_noise_dbm", 0.01)
    assert moved > 0
    report = verify_predictions(tmp_path / "skewed", served.history, _definitions(), examples=3)
    mismatched = {n: c.mismatched for n, c in report.features.items() if c.mismatched}
    assert mismatched == {"wifi_noise_dbm": moved}
    examples = report.features["wifi_noise_dbm"].examples
    assert len(examples) == 3
    for m in examples:
        assert m.recomputed is not None and m.as_applied is not None
        assert round(m.logged - 0.01, 9) in (round(m.recomputed, 9), round(m.as_applied, 9))


def test_a_changed_definition_is_a_version_mismatch(served: Served) -> None:
    text = default_definitions_path().read_text()
    body = text.replace('window = "24h"\nttl = "5m"', 'window = "12h"\nttl = "5m"')
    defs = parse_definitions(body, "changed.toml")
    changed = dict(defs.features)
    assert changed["signal_errors_24h"].version != _definitions()["signal_errors_24h"].version
    report = verify_predictions(served.store, served.history, changed)
    c = report.features["signal_errors_24h"]
    assert c.checked == 0 and c.version_mismatch > 0
    assert c.version_mismatch + sum(c.not_checkable.values()) == 400
    assert report.mismatched == 0
    # a history without the feature cannot recompute it either
    shutil.copytree(served.history, served.root / "history-partial")
    shutil.rmtree(served.root / "history-partial" / "speed_tests_24h")
    partial = verify_predictions(served.store, served.root / "history-partial", _definitions())
    assert partial.features["connected_devices"].checked == 0
    assert partial.features["connected_devices"].version_mismatch > 0
    assert partial.mismatched == 0


def test_the_request_version_is_the_one_assembly_logs() -> None:
    assert REQUEST_VERSION == REQUEST_FEATURE_VERSION


def test_features_verify_cli(served: Served, tmp_path: Path, capsys) -> None:
    from streamml.cli import main

    argv = ["features", "verify", "--prediction-store", str(served.store)]
    argv += ["--history", str(served.history)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "0 mismatched of" in out and "signal_errors_24h" in out
    _skew_copy(served, tmp_path / "skewed", "signal_errors_24h", 1.0)
    skewed = ["features", "verify", "--prediction-store", str(tmp_path / "skewed")]
    skewed += ["--history", str(served.history)]
    assert main([*skewed, "--json", "--since", "1970-01-01T00:00:00Z"]) == 1
    body = orjson.loads(capsys.readouterr().out)
    by_name = {f["feature"]: f for f in body["features"]}
    assert body["mismatched"] == by_name["signal_errors_24h"]["mismatched"] > 0
    assert len(by_name["signal_errors_24h"]["examples"]) == 5
    assert main(skewed) == 1
    assert "mismatches (up to 5 per feature)" in capsys.readouterr().out
    assert main([*argv, "--since", "yesterday"]) == 2
    assert "--since" in capsys.readouterr().err
