"""`streamml demo`: the main job end to end on embedded defaults, in a local folder."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import orjson

from streamml.console import Progress, format_table, human
from streamml.dataflows.error_count import ErrorCountConfig, SourceConfig
from streamml.generate_cli import write_events
from streamml.operators.sources import GeneratorConfig
from streamml.run_cli import run_error_count, summary_rows
from streamml.state.online import OnlineStore

__all__ = ["register", "run_demo"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add `streamml demo`."""
    p = sub.add_parser(
        "demo",
        help="run the main job on generated data",
        description=(
            "Generate a signal-error stream with some malformed lines, run the rolling 24-hour "
            "error count over it, and show the summary, alerts and online feature values. "
            "Everything is written under --dir and replaced on each run."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dir", type=Path, default=Path(".demo"), help="working folder")
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--accounts", type=int, default=3_000)
    p.add_argument("--seed", type=int, default=7)
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; returns the exit code."""
    root: Path = args.dir.resolve()
    for name in ("state", "alerts.jsonl", "dead-letters.jsonl"):
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
    print("2. running the rolling 24-hour error count (alert above 2000)")
    config = ErrorCountConfig(
        source=SourceConfig(kind="file", paths=(str(path),)),
        state_dir=root / "state",
        alerts_out=root / "alerts.jsonl",
        dead_letters_out=root / "dead-letters.jsonl",
        history_dir=root / "state" / "history",
        stats_path=root / "stats.json",
    )
    result = run_error_count(config)
    if result.returncode != 0:
        print("the flow failed", file=sys.stderr)
        return 1
    print(format_table(summary_rows(result), headers=["error-count", "value"]))
    alerts = [orjson.loads(line) for line in (root / "alerts.jsonl").read_bytes().splitlines()]
    print(f"3. {len(alerts)} alerts written to {root / 'alerts.jsonl'}; the first ones:")
    print(
        format_table(
            [(a["account"], a["ts"], a["value"]) for a in alerts[:5]],
            headers=["account", "ts (ms)", "count after"],
        )
    )
    end = gen.start_ms + gen.span_ms
    store = OnlineStore(config.state_dir)
    accounts = list(dict.fromkeys(a["account"] for a in alerts))[:5]
    values = store.get_many(accounts, as_of=end)
    store.close()
    print(
        "4. online store, as of the end of the stream (streamml features get ... --as-of "
        f"{end} --state-dir {config.state_dir}):"
    )
    print(
        format_table(
            [(a, v.value, v.updated_at) for a, v in zip(accounts, values, strict=True)],
            headers=["account", "signal_errors_24h", "updated_at (ms)"],
        )
    )
    _score_demo(root, accounts, [v.value for v in values])
    return 0


def _score_demo(root: Path, accounts: list[str], errors_24h: list[int]) -> None:
    """Score slow speed tests of the alerted accounts with the bundled triage model."""
    from bytewax import operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.testing import TestingSink, TestingSource, run_main

    from streamml.onnx_models import ensure_demo_registry, generate_speedtests
    from streamml.operators.scoring import ScoreRequest, ScoringConfig, score

    registry = root / "models"
    version = ensure_demo_registry(registry)
    rows = generate_speedtests(len(accounts), seed=1)
    column = list(rows.feature_names).index("signal_errors_24h")
    requests = []
    for i, (account, errors) in enumerate(zip(accounts, errors_24h, strict=True)):
        x = rows.X[i].copy()
        x[column] = errors
        requests.append(ScoreRequest(f"speedtest-{account}", version.name, version.version, x))
    flow = Dataflow("demo_scoring")
    outs = score(
        "score",
        op.input("requests", flow, TestingSource(requests)),
        ScoringConfig(registry_dir=registry),
    )
    predictions: list = []
    op.output("predictions", outs.oks, TestingSink(predictions))
    run_main(flow)
    print(f"5. slow speed tests triaged by {version.name} v{version.version} (ONNX Runtime):")
    rows_out = [
        (a, e, p.label, f"{max(p.probabilities):.2f}")
        for a, e, p in zip(accounts, errors_24h, predictions, strict=True)
    ]
    print(format_table(rows_out, headers=["account", "signal_errors_24h", "trouble", "p"]))
