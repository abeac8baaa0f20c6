"""`streamml demo`: the main job end to end on embedded defaults, in a local folder."""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from streamml.console import Progress, format_table, human

if TYPE_CHECKING:
    from streamml.onnx_models.speedtests import RequestGeneratorConfig

__all__ = ["register", "run_demo"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add `streamml demo`."""
    p = sub.add_parser(
        "demo",
        help="run the main job on generated data",
        description=(
            "Generate a signal-error stream with some malformed lines and speed tests, compute the "
            "bundled features over them (the rolling 24-hour error count and five speed-test "
            "features) and show the summary, alerts and online feature values; then "
            "start the telemetry service and answer generated slow speed tests with the "
            "prediction flow (selection, feature assembly, on-demand fetches, ONNX scoring), and "
            "recompute the online features the predictions logged from the history store, and "
            "join the requests' outcomes to every prediction. `streamml demo lifecycle` runs "
            "four days instead: a modem firmware rollout changes the world on day 2, the live "
            "model's accuracy falls (estimated before outcomes, realised after), a model "
            "retrained on day 2 runs as a shadow on day 3 and is promoted for day 4. "
            "Everything is written under --dir and replaced on each run."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "which", nargs="?", choices=["main", "lifecycle"], default="main", help="which demo"
    )
    p.add_argument("--dir", type=Path, default=Path(".demo"), help="working folder")
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--accounts", type=int, default=3_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--requests", type=int, default=2_000, help="slow speed tests to answer")
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; returns the exit code."""
    if args.which == "lifecycle":
        from streamml.lifecycle import print_figures, run_lifecycle

        root = args.dir.resolve() / "lifecycle"
        print(
            f"the speed-test triage model over four days of generated requests ({root}); a "
            "modem firmware rollout changes the world at the start of day 2"
        )
        figures = run_lifecycle(root, requests=args.requests, seed=args.seed)
        print_figures(figures)
        return 0
    from streamml.dataflows.features import FeaturesConfig, SourceInput
    from streamml.generate import write_events, write_speed_tests
    from streamml.jobs import run_features
    from streamml.operators.sources import GeneratorConfig
    from streamml.run_cli import summary_rows
    from streamml.state.online import OnlineStore

    root: Path = args.dir.resolve()
    for name in (
        "state",
        "speed-tests.jsonl",
        "alerts.jsonl",
        "dead-letters.jsonl",
        "predictions",
        "predictions.jsonl",
        "timeouts.jsonl",
        "outcomes.jsonl",
    ):
        target = root / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    gen = GeneratorConfig(events=args.events, accounts=args.accounts, seed=args.seed)
    print(f"1. generating {human(args.events)} signal errors over {human(args.accounts)} accounts")
    [path] = write_events(
        root / "errors.csv", gen, fmt="csv", junk_rate=0.0005, progress=Progress()
    )
    print(f"   {path}")
    tests = write_speed_tests(root / "speed-tests.jsonl", replace(gen, events=args.events // 10))
    print(f"   {tests} ({human(args.events // 10)} speed tests)")
    print(
        "2. computing the bundled features (streamml features list): the 24-hour error count "
        "(alert above 2000) and five speed-test features, in one flow"
    )
    config = FeaturesConfig(
        inputs=(
            SourceInput("signal_errors", "file", (str(path),)),
            SourceInput("speed_tests", "file", (str(tests),)),
        ),
        state_dir=root / "state",
        alerts_out=root / "alerts.jsonl",
        dead_letters_out=root / "dead-letters.jsonl",
        history_dir=root / "state" / "history",
        stats_path=root / "stats.json",
        settle_ms=0,
    )
    result = run_features(config)
    if result.returncode != 0:
        print("the flow failed", file=sys.stderr)
        return 1
    print(format_table(summary_rows(result), headers=["features", "value"]))
    alerts = [orjson.loads(line) for line in (root / "alerts.jsonl").read_bytes().splitlines()]
    print(f"3. {len(alerts)} alerts written to {root / 'alerts.jsonl'}; the first ones:")
    print(
        format_table(
            [(a["feature"], a["account"], a["ts"], a["value"]) for a in alerts[:5]],
            headers=["feature", "account", "ts (ms)", "value after"],
        )
    )
    end = gen.start_ms + gen.span_ms
    store = OnlineStore(config.state_dir)
    accounts = list(dict.fromkeys(a["account"] for a in alerts))[:2]
    reads = store.get_features(accounts, as_of=end)
    store.close()
    print(
        "4. online store, as of the end of the stream (streamml features get ... --as-of "
        f"{end} --state-dir {config.state_dir}):"
    )
    rows = [
        (a, name, "-" if r.value is None else f"{r.value:.6g}", r.status, r.version)
        for a, features in zip(accounts, reads, strict=True)
        for name, r in features.items()
    ]
    print(format_table(rows, headers=["account", "feature", "value", "status", "version"]))
    ok = _predict_demo(root, args.accounts, args.seed, end, args.requests)
    return 0 if ok else 1


def _predict_demo(root: Path, accounts: int, seed: int, as_of: int, requests: int) -> bool:
    """Answer generated slow speed tests with the prediction flow; print a few answers."""
    from streamml.dataflows.predict import PredictFlowConfig, RequestsConfig
    from streamml.onnx_models import ensure_demo_registry
    from streamml.onnx_models.speedtests import RequestGeneratorConfig
    from streamml.predict_cli import run_predict
    from streamml.predict_cli import summary_rows as predict_rows
    from streamml.telemetry import TelemetryConfig
    from streamml.telemetry_process import start_telemetry_process

    version = ensure_demo_registry(root / "models")
    with start_telemetry_process(TelemetryConfig(seed=seed)) as telemetry:
        print(
            f"5. telemetry service (streamml telemetry serve) at {telemetry.url}; answering "
            f"{human(requests)} slow speed tests with {version.name} (live: v{version.version})"
        )
        gen = RequestGeneratorConfig(
            requests=requests, accounts=accounts, seed=seed, now_ms=as_of, span_ms=3_600_000
        )
        config = PredictFlowConfig(
            requests=RequestsConfig(kind="generate", generator=gen),
            state_dir=root / "state",
            registry_dir=root / "models",
            telemetry_url=telemetry.url,
            prediction_store=root / "predictions",
            predictions_out=root / "predictions.jsonl",
            timeouts_out=root / "timeouts.jsonl",
            stats_path=root / "predict-stats.json",
        )
        result = run_predict(config)
    if result.returncode != 0:
        print("the prediction flow failed", file=sys.stderr)
        return False
    print(format_table(predict_rows(result), headers=["predict", "value"]))
    answers = [
        orjson.loads(line) for line in (root / "predictions.jsonl").read_bytes().splitlines()
    ]
    shown = sorted(answers, key=lambda a: -a["features"]["signal_errors_24h"]["value"])[:5]
    print(
        f"6. {len(answers)} predictions in {root / 'predictions'} (Parquet) and "
        f"{root / 'predictions.jsonl'}; a few, with where each feature came from:"
    )
    rows = []
    for a in shown:
        f = a["features"]
        rows.append(
            (
                a["request_id"],
                a["account"],
                a["label"],
                f"{a['probabilities'][a['label']]:.2f}",
                f"{f['signal_errors_24h']['value']:.0f} ({f['signal_errors_24h']['status']})",
                f"{f['wifi_rssi_dbm']['value']:.0f} ({f['wifi_rssi_dbm']['status']})",
                f"{f['download_ratio']['value']:.2f} ({f['download_ratio']['status']})",
            )
        )
    headers = ["request", "account", "trouble", "p", "errors 24h", "wifi RSSI", "download"]
    print(format_table(rows, headers=headers))
    first = shown[0]["request_id"] if shown else "REQUEST_ID"
    print(
        f"   reproduce one: streamml predictions explain {first} --prediction-store "
        f"{root / 'predictions'} --registry {root / 'models'}"
    )
    return _verify_demo(root) and _outcomes_demo(root, gen)


def _outcomes_demo(root: Path, gen: RequestGeneratorConfig) -> bool:
    """Join the requests' outcomes (the generator's hidden truth) to the predictions."""
    from streamml.dataflows.outcomes import OutcomesFlowConfig
    from streamml.generate import write_outcomes
    from streamml.outcomes_cli import run_outcomes
    from streamml.outcomes_cli import summary_rows as outcome_rows
    from streamml.state.outcomes import read_outcomes

    path = write_outcomes(root / "outcomes.jsonl", gen, missing_rate=0.1, seed=1)
    print(
        f"8. outcomes observed minutes to days later ({path}; 10% never observed), joined to "
        "every scored variant (streamml run outcomes --drain):"
    )
    config = OutcomesFlowConfig(
        prediction_store=root / "predictions",
        paths=(str(path),),
        drain=True,
        stats_path=root / "outcome-stats.json",
    )
    result = run_outcomes(config)
    if result.returncode != 0:
        print("the outcome flow failed", file=sys.stderr)
        return False
    print(format_table(outcome_rows(result)[:6], headers=["outcomes", "value"]))
    rows = read_outcomes(config.prediction_store).to_pylist()
    by_variant: dict[tuple[str, str], list[bool]] = {}
    for r in rows:
        by_variant.setdefault((r["version"], r["variant"]), []).append(r["correct"])
    print(
        format_table(
            [
                (v, variant, len(c), f"{sum(c) / len(c):.1%}")
                for (v, variant), c in sorted(by_variant.items())
            ],
            headers=["version", "variant", "outcomes", "accuracy"],
        )
    )
    print(f"   matched rows: {config.prediction_store / 'outcomes'} (Parquet by day)")
    return True


def _verify_demo(root: Path) -> bool:
    """Recompute the online features the predictions logged from the history store."""
    from streamml.state.consistency import verify_predictions
    from streamml.state.definitions import default_definitions

    store, history = root / "predictions", root / "state" / "history"
    report = verify_predictions(store, history, dict(default_definitions().features))
    print(
        "7. training/serving consistency (streamml features verify --prediction-store "
        f"{store} --history {history}): online values logged by the predictions, recomputed "
        "from the history store as of each request"
    )
    rows = [
        (c.feature, c.checked, c.exact, c.lagged, c.mismatched, c.version_mismatch)
        for c in report.features.values()
        if c.checked or c.version_mismatch
    ]
    headers = ["feature", "checked", "exact", "by lag", "mismatched", "version mismatch"]
    print(format_table(rows, headers=headers))
    print(
        "   by lag: the value an online read as of the request gives after the events the flow "
        "had applied (here every event, some later than the request in its hour: the requests "
        "were answered after the whole stream)"
    )
    if report.mismatched:
        print(f"{report.mismatched} logged values differ from the history", file=sys.stderr)
        return False
    return True
