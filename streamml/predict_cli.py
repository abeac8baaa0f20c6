"""`streamml run predict`: run the prediction flow to the end of its requests and summarise it."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from streamml.console import Progress, human
from streamml.dataflows.environment import KAFKA_PREFIX, add_kafka_client_option, kafka_env_with
from streamml.runner import cost_rows, report_run
from streamml.state.errors import RefusedError

if TYPE_CHECKING:
    from streamml.dataflows.predict import PredictFlowConfig
    from streamml.runner import RunResult

__all__ = ["add_parser", "config_from_args", "run_predict", "summary_rows"]

PREDICT_FLOW = "streamml.dataflows.predict:flow"


def add_parser(flows: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `streamml run predict`."""
    p = flows.add_parser(
        "predict",
        help="answer prediction requests: select, assemble features, score, record",
        description=(
            "Read prediction requests ({request_id, model, account, ts, context}), select each "
            "model's version from the registry's routing (live, A/B split, shadows), assemble "
            "its features (request context, online store, on-demand service fetched "
            "asynchronously when stale or absent), score with ONNX Runtime in batches and "
            "record every prediction with its provenance in the prediction store. Every request "
            "ends once: as a prediction, or as a timeout record at its deadline."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = p.add_argument_group("requests")
    src.add_argument(
        "--requests-source",
        choices=["generate", "file", "kafka"],
        default="generate",
        help="seeded slow speed tests (--requests/--accounts/--seed), JSON lines files "
        "(--input) or a Kafka topic (--brokers/--requests-topic)",
    )
    src.add_argument("--input", action="append", default=[], metavar="PATH", help="JSON lines")
    src.add_argument("--requests", type=int, default=10_000, help="requests to generate")
    src.add_argument("--accounts", type=int, default=100_000, help="distinct accounts to draw")
    src.add_argument("--seed", type=int, default=7, help="generator seed (use the telemetry's)")
    src.add_argument(
        "--now",
        help="time of the last generated request, epoch ms or ISO-8601 (default: the wall clock)",
    )
    src.add_argument(
        "--drift-at",
        help="generated requests: a modem firmware rollout changes the world at this time "
        "(epoch ms or ISO-8601)",
    )
    kafka = p.add_argument_group("kafka")
    kafka.add_argument("--brokers", help="bootstrap servers HOST:PORT[,HOST:PORT...]")
    kafka.add_argument("--requests-topic", help="topic of prediction requests")
    kafka.add_argument(
        "--start", choices=["stored", "earliest", "latest"], default="stored", help="where to start"
    )
    kafka.add_argument(
        "--stop-at-end", action="store_true", help="read up to the end offsets present at start"
    )
    add_kafka_client_option(kafka)
    kafka.add_argument("--predictions-topic", help="also write answers to this topic")
    kafka.add_argument("--dead-letters-topic", help="also write dead letters to this topic")
    feat = p.add_argument_group("features and models")
    feat.add_argument("--registry", type=Path, required=True, help="model registry")
    feat.add_argument("--state-dir", type=Path, required=True, help="online store (state dir)")
    feat.add_argument(
        "--telemetry-url", help="base URL of the telemetry service (none: never fetched)"
    )
    feat.add_argument("--request-ttl", type=int, default=2000, metavar="MS", help="deadline")
    feat.add_argument("--fetch-timeout", type=int, default=500, metavar="MS", help="per call")
    feat.add_argument("--fetch-attempts", type=int, default=3, help="calls per fetch")
    feat.add_argument("--fetch-in-flight", type=int, default=64, help="concurrent fetches")
    out = p.add_argument_group("outputs")
    out.add_argument("--prediction-store", type=Path, help="default: STATE_DIR/predictions")
    out.add_argument("--predictions-out", type=Path, help="append answers here (JSON lines)")
    out.add_argument("--timeouts-out", type=Path, help="append timeout records (JSON lines)")
    out.add_argument("--dead-letters-out", type=Path, help="append dead letters (JSON lines)")
    out.add_argument("--processes", type=int, default=1, help="worker processes on this machine")
    out.add_argument("--json", action="store_true", help="print the summary as JSON")
    rec = p.add_argument_group("recovery")
    rec.add_argument("--recovery-dir", type=Path, help="Bytewax recovery directory")
    rec.add_argument("--snapshot-interval", type=int, default=10, help="seconds between snapshots")
    p.set_defaults(func=_cmd_predict)


def config_from_args(args: argparse.Namespace, stats_path: Path | None) -> PredictFlowConfig:
    """Build the flow config from parsed arguments; raises ValueError on bad input."""
    from streamml.dataflows.predict import PredictFlowConfig, RequestsConfig
    from streamml.onnx_models.speedtests import RequestGeneratorConfig

    for path in args.input:
        if not Path(path).is_file():
            raise ValueError(f"input file not found: {path}")
    if args.requests_source == "file" and not args.input:
        raise ValueError("--requests-source file needs --input PATH")
    kafka_env = kafka_env_with(
        {
            "BROKERS": args.brokers,
            "TOPIC": args.requests_topic,
            "START": args.start,
            "CLIENT": args.kafka_client,
            "PREDICTIONS_TOPIC": args.predictions_topic,
            "DEAD_LETTERS_TOPIC": args.dead_letters_topic,
            "STOP_AT_END": args.stop_at_end and "1",
        }
    )
    kafka_used = (
        args.requests_source == "kafka" or args.predictions_topic or args.dead_letters_topic
    )
    if kafka_used and not kafka_env.get(KAFKA_PREFIX + "BROKERS"):
        raise ValueError("Kafka needs --brokers HOST:PORT (or STREAMML_KAFKA_BROKERS)")
    if args.requests_source == "kafka" and not kafka_env.get(KAFKA_PREFIX + "TOPIC"):
        raise ValueError("--requests-source kafka needs --requests-topic NAME")
    if args.processes < 1:
        raise ValueError("--processes must be >= 1")
    if not args.registry.is_dir():
        raise ValueError(f"model registry {str(args.registry)!r} is not a directory")
    from streamml.state.definitions import parse_instant

    now = time.time_ns() // 1_000_000 if args.now is None else parse_instant(args.now)
    generator = RequestGeneratorConfig(
        requests=args.requests,
        accounts=args.accounts,
        seed=args.seed,
        now_ms=now,
        drift_at_ms=None if args.drift_at is None else parse_instant(args.drift_at),
    )
    return PredictFlowConfig(
        requests=RequestsConfig(
            kind=args.requests_source,
            paths=tuple(str(Path(p).resolve()) for p in args.input),
            generator=generator,
        ),
        state_dir=args.state_dir.resolve(),
        registry_dir=args.registry.resolve(),
        telemetry_url=args.telemetry_url,
        fetch_timeout_ms=args.fetch_timeout,
        fetch_attempts=args.fetch_attempts,
        fetch_in_flight=args.fetch_in_flight,
        request_ttl_ms=args.request_ttl,
        prediction_store=args.prediction_store.resolve() if args.prediction_store else None,
        predictions_out=args.predictions_out,
        timeouts_out=args.timeouts_out,
        dead_letters_out=args.dead_letters_out,
        stats_path=stats_path,
        recovery_dir=args.recovery_dir.resolve() if args.recovery_dir else None,
        kafka_env=tuple(sorted(kafka_env.items())),
    )


def run_predict(
    config: PredictFlowConfig,
    *,
    processes: int = 1,
    show_progress: bool | None = None,
    snapshot_interval_s: int = 10,
) -> RunResult:
    """Run the prediction flow in worker processes; shows progress on a terminal."""
    from streamml.dataflows.predict import prepare
    from streamml.recovery import ensure_recovery_dir, recovery_args
    from streamml.runner import run_flow_processes

    extra: list[str] = []
    if config.recovery_dir is not None:
        ensure_recovery_dir(config.recovery_dir)
        extra = recovery_args(config.recovery_dir, snapshot_interval_s)
    prepare(config)
    bar = Progress(enabled=show_progress)

    def progress(counters: dict[str, Any], elapsed: float) -> None:
        n = counters.get("requests", 0)
        bar.update(
            f"{elapsed:6.1f}s  requests {human(n)}  answers {human(counters.get('answers', 0))}"
            f"  timeouts {human(_timeouts(counters))}  {human(n / max(elapsed, 1e-9))} requests/s"
        )

    try:
        return run_flow_processes(
            PREDICT_FLOW,
            config.to_env(),
            processes=processes,
            stats_path=config.stats_path,
            progress=progress,
            extra_args=extra,
        )
    finally:
        bar.done()


def _timeouts(c: dict[str, int]) -> int:
    return sum(v for k, v in c.items() if k.startswith("timeouts."))


def summary_rows(result: RunResult) -> list[tuple[str, str]]:
    """Return the summary of a prediction run as (name, value) rows."""
    c = result.counters
    rows = [
        ("requests", human(c.get("requests", 0))),
        ("answered", human(c.get("answers", 0))),
        ("shadow predictions", human(c.get("shadows", 0))),
        ("timeouts", human(_timeouts(c))),
    ]
    rows += [
        (f"  {k.removeprefix('timeouts.')}", human(c[k]))
        for k in sorted(c)
        if k.startswith("timeouts.")
    ]
    rows.append(("dead letters", human(c.get("dead", 0))))
    rows += [
        (f"  {k.removeprefix('dead.')}", human(c[k])) for k in sorted(c) if k.startswith("dead.")
    ]
    for status in ("fresh", "stale", "missing", "fetched", "defaulted"):
        if c.get(f"features.{status}"):
            rows.append((f"features {status}", human(c[f"features.{status}"])))
    for key in sorted(k for k in c if k.startswith("fetch.")):
        rows.append((key.replace(".", " "), human(c[key])))
    rows += [
        ("deadline reached", human(c.get("deadline_reached", 0))),
        *cost_rows(result, "requests/s", c.get("requests", 0)),
    ]
    return rows


def _cmd_predict(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="streamml-predict-") as tmp:
        try:
            config = config_from_args(args, Path(tmp) / "stats.json")
            result = run_predict(
                config, processes=args.processes, snapshot_interval_s=args.snapshot_interval
            )
        except (ValueError, RefusedError, OSError) as exc:
            print(f"streamml run predict: {exc}", file=sys.stderr)
            return 2
    return report_run("run predict", result, summary_rows(result), as_json=args.json)
