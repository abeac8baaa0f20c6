"""`streamml run features` and `streamml features backfill`: compute the features of definitions."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from streamml.console import human
from streamml.dataflows.environment import KAFKA_PREFIX, add_kafka_client_option, kafka_env_with
from streamml.run_cli import DEFAULT_SETTLE_MS, add_cluster_options, cluster_from_args
from streamml.runner import report_run
from streamml.state.definitions import DefinitionError
from streamml.state.errors import RefusedError

if TYPE_CHECKING:
    from streamml.dataflows.features import FeaturesConfig

__all__ = ["add_backfill_parser", "add_run_parser"]


def _pairs(values: list[str], flag: str) -> list[tuple[str, str]]:
    out = []
    for v in values:
        name, sep, rest = v.partition("=")
        if not sep or not name or not rest:
            raise ValueError(f"{flag} takes SOURCE=VALUE, got {v!r}")
        out.append((name.strip(), rest))
    return out


def _common(p: argparse.ArgumentParser, *, backfill: bool) -> None:
    p.add_argument(
        "--definitions",
        type=Path,
        help="feature definition file (TOML; default: the bundled one, `streamml features list`)",
    )
    p.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="SOURCE=PATH",
        help="a file of SOURCE's events (JSON lines or CSV with a header); repeat for more",
    )
    p.add_argument("--state-dir", required=True, type=Path, help="RocksDB state / online store")
    p.add_argument(
        "--shards", type=int, default=16, help="state shards (fixed when the state dir is created)"
    )
    p.add_argument("--alerts-out", type=Path, help="append alerts here as JSON lines")
    p.add_argument("--dead-letters-out", type=Path, help="append dead letters here (JSON lines)")
    p.add_argument("--late-out", type=Path, help="append late events here (JSON lines)")
    p.add_argument(
        "--history-dir", type=Path, help="history store root (default: STATE_DIR/history)"
    )
    p.add_argument("--no-history", action="store_true", help="do not write the history store")
    p.add_argument(
        "--postgres-dsn",
        default=os.environ.get("STREAMML_POSTGRES_DSN"),
        help='PostgreSQL for features marked `online = ["postgres"]` (or STREAMML_POSTGRES_DSN)',
    )
    p.add_argument("--processes", type=int, default=1, help="worker processes on this machine")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    if backfill:
        return
    p.add_argument(
        "--topic", action="append", default=[], metavar="SOURCE=TOPIC", help="a Kafka source"
    )
    p.add_argument("--brokers", help="Kafka bootstrap servers HOST:PORT[,...]")
    p.add_argument(
        "--start",
        choices=["stored", "earliest", "latest"],
        default="stored",
        help="where Kafka sources start: the stored or snapshotted position, or the topic's ends",
    )
    p.add_argument(
        "--stop-at-end", action="store_true", help="Kafka: stop at the end offsets seen at start"
    )
    add_kafka_client_option(p)
    p.add_argument(
        "--generate",
        action="append",
        default=[],
        metavar="SOURCE",
        help="generate SOURCE's events (signal-error shaped) with --events/--accounts/--seed",
    )
    p.add_argument("--events", type=int, default=1_000_000, help="events to generate")
    p.add_argument("--accounts", type=int, default=100_000, help="distinct accounts to generate")
    p.add_argument("--seed", type=int, default=7, help="generator seed")
    p.add_argument(
        "--settle-ms",
        type=int,
        default=DEFAULT_SETTLE_MS,
        help="a last line without a newline is read once its file has not changed for this long",
    )
    p.add_argument(
        "--reset-source",
        action="append",
        default=[],
        metavar="PATH|kafka:TOPIC",
        help="read this input again from its start as a new input",
    )
    p.add_argument("--recovery-dir", type=Path, help="Bytewax recovery directory")
    p.add_argument("--snapshot-interval", type=int, default=10, help="seconds between snapshots")
    add_cluster_options(p)


def add_run_parser(flows: argparse._SubParsersAction) -> None:
    """Add `streamml run features`."""
    p = flows.add_parser(
        "features",
        help="every feature of a definition file, from its sources, in one flow",
        description=(
            "Compute the features of a definition file from their sources (files with --input "
            "SOURCE=PATH, Kafka topics with --topic SOURCE=TOPIC, or --generate SOURCE) in one "
            "dataflow: all features of a source in one state record per account, their values in "
            "the online store under --state-dir, every accepted update in the history store, "
            "alerts for features with alert rules. Running again continues from the stored state; "
            "definitions that would reinterpret it are refused."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _common(p, backfill=False)
    p.set_defaults(func=_cmd_run, backfill=False)


def add_backfill_parser(fsub: argparse._SubParsersAction) -> None:
    """Add `streamml features backfill`."""
    p = fsub.add_parser(
        "backfill",
        help="compute features over stored event files (the same code as the stream)",
        description=(
            "Compute the features of a definition file over complete event files (--input "
            "SOURCE=PATH) through the same operators as `streamml run features`: the online "
            "values and history rows are those a stream of the same events gives. Use a new "
            "--state-dir for a new feature version."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _common(p, backfill=True)
    p.set_defaults(func=_cmd_run, backfill=True)


def config_from_args(args: argparse.Namespace, stats_path: Path | None) -> FeaturesConfig:
    """Build the flow config from parsed arguments; raises ValueError on bad input."""
    from streamml.dataflows.features import FeaturesConfig, SourceInput
    from streamml.operators.sources import GeneratorConfig

    paths: dict[str, list[str]] = {}
    for name, path in _pairs(args.input, "--input"):
        if not Path(path).is_file():
            raise ValueError(f"--input {name}={path}: file not found")
        paths.setdefault(name, []).append(str(Path(path).resolve()))
    topics = dict(_pairs(getattr(args, "topic", []), "--topic"))
    generated = list(getattr(args, "generate", []))
    seen = list(paths) + list(topics) + generated
    dup = {n for n in seen if seen.count(n) > 1}
    if dup:
        raise ValueError(f"source {sorted(dup)[0]!r} is given more than one kind of input")
    if not seen:
        raise ValueError("give at least one source: --input SOURCE=PATH, --topic or --generate")
    if args.processes < 1:
        raise ValueError("--processes must be >= 1")
    generator = GeneratorConfig(
        events=getattr(args, "events", 0),
        accounts=getattr(args, "accounts", 1),
        seed=getattr(args, "seed", 7),
    )
    inputs = [SourceInput(n, "file", tuple(p)) for n, p in paths.items()]
    inputs += [SourceInput(n, "kafka", topic=t) for n, t in topics.items()]
    inputs += [SourceInput(n, "generate", generator=generator) for n in generated]
    settings: dict[str, object] = {"CLIENT": getattr(args, "kafka_client", None)}
    if topics:
        settings |= {
            "BROKERS": args.brokers,
            "START": args.start,
            "STOP_AT_END": args.stop_at_end and "1",
        }
    kafka_env = kafka_env_with(settings)
    if topics and not kafka_env.get(KAFKA_PREFIX + "BROKERS"):
        raise ValueError("Kafka sources need --brokers HOST:PORT (or STREAMML_KAFKA_BROKERS)")
    state_dir = Path(args.state_dir).resolve()
    recovery = getattr(args, "recovery_dir", None)
    return FeaturesConfig(
        inputs=tuple(inputs),
        state_dir=state_dir,
        definitions_path=Path(args.definitions).resolve() if args.definitions else None,
        shards=args.shards,
        alerts_out=args.alerts_out,
        dead_letters_out=args.dead_letters_out,
        late_out=args.late_out,
        history_dir=None if args.no_history else (args.history_dir or state_dir / "history"),
        stats_path=stats_path,
        kafka_env=tuple(sorted(kafka_env.items())),
        recovery_dir=Path(recovery).resolve() if recovery else None,
        settle_ms=0 if args.backfill else args.settle_ms,
        postgres_dsn=args.postgres_dsn or None,
    )


def _cmd_run(args: argparse.Namespace) -> int:
    from streamml.jobs import run_features
    from streamml.processes import stop_on_sigterm
    from streamml.run_cli import summary_rows

    stop_on_sigterm()
    name = "features backfill" if args.backfill else "run features"
    with tempfile.TemporaryDirectory(prefix="streamml-run-") as tmp:
        try:
            member = cluster_from_args(args)
            config = config_from_args(args, Path(tmp) / "stats.json")
            resets = tuple(
                r if r.startswith("kafka:") else str(Path(r).resolve())
                for r in getattr(args, "reset_source", [])
            )
            result = run_features(
                config,
                processes=args.processes,
                snapshot_interval_s=getattr(args, "snapshot_interval", 10),
                reset_sources=resets,
                member=member,
            )
        except (ValueError, RefusedError, DefinitionError) as exc:
            print(f"streamml {name}: {exc}", file=sys.stderr)
            return 2
    rows = summary_rows(result)
    if result.counters.get("filtered"):
        rows.insert(1, ("filtered out", human(result.counters["filtered"])))
    return report_run(name, result, rows, as_json=args.json)
