"""`streamml run outcomes`: join outcomes to the predictions they resolve, and summarise."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamml.console import Progress, human
from streamml.dataflows.environment import KAFKA_PREFIX, add_kafka_client_option, kafka_env_with
from streamml.runner import cost_rows, report_run
from streamml.state.errors import RefusedError

if TYPE_CHECKING:
    from streamml.dataflows.outcomes import OutcomesFlowConfig
    from streamml.runner import RunResult

__all__ = ["add_parser", "config_from_args", "run_outcomes", "summary_rows"]

OUTCOMES_FLOW = "streamml.dataflows.outcomes:flow"


def _duration_ms(text: str) -> int:
    from streamml.state.definitions import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(flows: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `streamml run outcomes`."""
    p = flows.add_parser(
        "outcomes",
        help="join outcomes to their predictions (every variant) into the outcome store",
        description=(
            "Read the scored variants of a prediction store and the outcomes "
            '({"request_id" or "account"+"ts", "outcome", "observed_at"}), join each outcome '
            "to every variant scored for its request (answer, A/B, shadows) and write the "
            "matched rows to the outcome store beside the predictions (STORE/outcomes, "
            "Parquet by day). A prediction waits for its outcome --outcome-ttl, in RocksDB; "
            "what never matches is reported (STORE/outcome-reports.jsonl), not lost. Invalid "
            "outcomes are dead letters with a reason. What still waits at the end of the "
            "input stays for the next run (or is reported with --drain)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--prediction-store", type=Path, required=True, help="prediction store root")
    src = p.add_argument_group("outcomes")
    src.add_argument(
        "--outcomes-source",
        choices=["file", "generate", "kafka"],
        default="file",
        help="JSON lines files (--input), the hidden truth of generated requests "
        "(--requests/--accounts/--seed/--now, as given to `run predict`) or a Kafka topic",
    )
    src.add_argument("--input", action="append", default=[], metavar="PATH", help="JSON lines")
    src.add_argument("--requests", type=int, default=10_000, help="generated requests")
    src.add_argument("--accounts", type=int, default=100_000, help="their distinct accounts")
    src.add_argument("--seed", type=int, default=7, help="the requests' seed")
    src.add_argument("--now", help="time of the last generated request (epoch ms or ISO-8601)")
    src.add_argument("--drift-at", help="the requests' --drift-at (epoch ms or ISO-8601)")
    src.add_argument("--missing-rate", type=float, default=0.1, help="share with no outcome")
    kafka = p.add_argument_group("kafka")
    kafka.add_argument("--brokers", help="bootstrap servers HOST:PORT[,HOST:PORT...]")
    kafka.add_argument("--outcomes-topic", help="topic of outcomes")
    kafka.add_argument(
        "--start", choices=["stored", "earliest", "latest"], default="stored", help="where to start"
    )
    kafka.add_argument(
        "--stop-at-end", action="store_true", help="read up to the end offsets present at start"
    )
    add_kafka_client_option(kafka)
    join = p.add_argument_group("join")
    join.add_argument(
        "--join-by",
        choices=["request", "account-ts"],
        default="request",
        help="join on the request id, or on the request's account and time",
    )
    join.add_argument(
        "--outcome-ttl",
        type=_duration_ms,
        default="30d",
        metavar="DURATION",
        help="how long a prediction waits for its outcome (e.g. 30d, 12h)",
    )
    join.add_argument(
        "--lateness",
        type=_duration_ms,
        default="1h",
        metavar="DURATION",
        help="how far out of time order each stream may arrive",
    )
    join.add_argument("--join-dir", type=Path, help="pending state (default STORE/join-state)")
    join.add_argument("--shards", type=int, default=8, help="join state shards (fixed at start)")
    join.add_argument(
        "--follow", action="store_true", help="keep reading new prediction store files"
    )
    join.add_argument(
        "--drain", action="store_true", help="at the end, report whatever still waits"
    )
    out = p.add_argument_group("outputs")
    out.add_argument("--reports-out", type=Path, help="default STORE/outcome-reports.jsonl")
    out.add_argument("--dead-letters-out", type=Path, help="append dead letters (JSON lines)")
    out.add_argument("--processes", type=int, default=1, help="worker processes on this machine")
    out.add_argument("--json", action="store_true", help="print the summary as JSON")
    rec = p.add_argument_group("recovery")
    rec.add_argument(
        "--recovery-dir", type=Path, help="Bytewax recovery directory (default JOIN_DIR/recovery)"
    )
    rec.add_argument("--snapshot-interval", type=int, default=10, help="seconds between snapshots")
    p.set_defaults(func=_cmd_outcomes)


def config_from_args(args: argparse.Namespace, stats_path: Path | None) -> OutcomesFlowConfig:
    """Build the flow config from parsed arguments; raises ValueError on bad input."""
    from streamml.dataflows.outcomes import OutcomesFlowConfig
    from streamml.onnx_models.speedtests import OutcomeConfig, RequestGeneratorConfig
    from streamml.state.definitions import parse_instant

    for path in args.input:
        if not Path(path).is_file():
            raise ValueError(f"input file not found: {path}")
    if args.outcomes_source == "file" and not args.input:
        raise ValueError("--outcomes-source file needs --input PATH")
    if args.outcomes_source == "generate" and args.now is None:
        raise ValueError("--outcomes-source generate needs --now (the requests' --now)")
    kafka_env = kafka_env_with(
        {
            "BROKERS": args.brokers,
            "TOPIC": args.outcomes_topic,
            "START": args.start,
            "CLIENT": args.kafka_client,
            "STOP_AT_END": args.stop_at_end and "1",
        }
    )
    if args.outcomes_source == "kafka":
        if not kafka_env.get(KAFKA_PREFIX + "BROKERS"):
            raise ValueError("Kafka needs --brokers HOST:PORT (or STREAMML_KAFKA_BROKERS)")
        if not kafka_env.get(KAFKA_PREFIX + "TOPIC"):
            raise ValueError("--outcomes-source kafka needs --outcomes-topic NAME")
    if args.processes < 1:
        raise ValueError("--processes must be >= 1")
    if not args.prediction_store.is_dir():
        raise ValueError(f"prediction store {str(args.prediction_store)!r} is not a directory")
    now = parse_instant(args.now) if args.now is not None else RequestGeneratorConfig().now_ms
    return OutcomesFlowConfig(
        prediction_store=args.prediction_store.resolve(),
        source=args.outcomes_source,
        paths=tuple(str(Path(p).resolve()) for p in args.input),
        requests=RequestGeneratorConfig(
            requests=args.requests,
            accounts=args.accounts,
            seed=args.seed,
            now_ms=now,
            drift_at_ms=None if args.drift_at is None else parse_instant(args.drift_at),
        ),
        outcomes=OutcomeConfig(missing_rate=args.missing_rate),
        join_dir=args.join_dir.resolve() if args.join_dir else None,
        shards=args.shards,
        join_by=args.join_by,
        outcome_ttl_ms=args.outcome_ttl,
        lateness_ms=args.lateness,
        follow=args.follow,
        drain=args.drain,
        reports_out=args.reports_out.resolve() if args.reports_out else None,
        dead_letters_out=args.dead_letters_out.resolve() if args.dead_letters_out else None,
        stats_path=stats_path,
        recovery_dir=args.recovery_dir.resolve() if args.recovery_dir else None,
        kafka_env=tuple(sorted(kafka_env.items())),
    )


def run_outcomes(
    config: OutcomesFlowConfig,
    *,
    processes: int = 1,
    show_progress: bool | None = None,
    snapshot_interval_s: int = 10,
) -> RunResult:
    """Run the outcome join flow in worker processes; shows progress on a terminal."""
    from streamml.dataflows.outcomes import prepare
    from streamml.recovery import ensure_recovery_dir, recovery_args
    from streamml.runner import run_flow_processes

    prepare(config)
    ensure_recovery_dir(config.recovery)
    extra = recovery_args(config.recovery, snapshot_interval_s)
    bar = Progress(enabled=show_progress)

    def progress(counters: dict[str, Any], elapsed: float) -> None:
        bar.update(
            f"{elapsed:6.1f}s  predictions {human(counters.get('predictions', 0))}"
            f"  outcomes {human(counters.get('outcomes', 0))}"
            f"  matched {human(counters.get('matched', 0))}"
        )

    try:
        return run_flow_processes(
            OUTCOMES_FLOW,
            config.to_env(),
            processes=processes,
            stats_path=config.stats_path,
            progress=progress,
            extra_args=extra,
        )
    finally:
        bar.done()


def summary_rows(result: RunResult) -> list[tuple[str, str]]:
    """Return the summary of an outcome join run as (name, value) rows."""
    c = result.counters
    rows = [
        ("scored variants read", human(c.get("predictions", 0))),
        ("outcomes read", human(c.get("outcomes", 0))),
        ("variants matched", human(c.get("matched", 0))),
        ("variants unresolved (reported)", human(c.get("unresolved", 0))),
        ("orphan outcomes (reported)", human(c.get("orphans", 0))),
        ("duplicate predictions ignored", human(c.get("duplicate_predictions", 0))),
        ("late predictions", human(c.get("late.predictions", 0))),
        ("late outcomes", human(c.get("late.outcomes", 0))),
        ("dead letters", human(c.get("dead", 0))),
    ]
    rows += [
        (f"  {k.removeprefix('dead.')}", human(c[k])) for k in sorted(c) if k.startswith("dead.")
    ]
    rows += cost_rows(result, "outcomes/s", c.get("outcomes", 0))
    return rows


def _cmd_outcomes(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="streamml-outcomes-") as tmp:
        try:
            config = config_from_args(args, Path(tmp) / "stats.json")
            result = run_outcomes(
                config, processes=args.processes, snapshot_interval_s=args.snapshot_interval
            )
        except (ValueError, RefusedError, OSError) as exc:
            print(f"streamml run outcomes: {exc}", file=sys.stderr)
            return 2
    return report_run("run outcomes", result, summary_rows(result), as_json=args.json)
