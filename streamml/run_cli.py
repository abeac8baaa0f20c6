"""`streamml run`: run a feature flow to the end of its input and summarise it."""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from streamml.commands import Command, add_commands
from streamml.console import human
from streamml.dataflows.environment import KAFKA_PREFIX, add_kafka_client_option, kafka_env_with
from streamml.runner import cost_rows, report_run
from streamml.state.errors import RefusedError
from streamml.state.layout import StateLayout

if TYPE_CHECKING:
    from streamml.cluster import ClusterMember
    from streamml.dataflows.error_count import ErrorCountConfig
    from streamml.runner import RunResult

__all__ = [
    "FLOWS",
    "add_cluster_options",
    "add_error_count_options",
    "add_error_count_parser",
    "cluster_from_args",
    "config_from_args",
    "register",
    "summary_rows",
]

DEFAULT_SETTLE_MS = 10_000
"""`streamml.operators.sources.DEFAULT_SETTLE_MS`, repeated here so that building the parser
does not import the sources (Bytewax, pyarrow); a test keeps the two equal."""

FLOWS: tuple[Command, ...] = (
    Command(
        "error-count",
        "rolling 24-hour signal-error count per account, with alerts",
        "streamml.run_cli",
        function="add_error_count_parser",
    ),
    Command(
        "predict",
        "answer prediction requests: select, assemble features, score, record",
        "streamml.predict_cli",
        function="add_parser",
    ),
    Command(
        "features",
        "every feature of a definition file, from its sources, in one flow",
        "streamml.features_run_cli",
        function="add_run_parser",
    ),
    Command(
        "outcomes",
        "join outcomes to their predictions (every variant) into the outcome store",
        "streamml.outcomes_cli",
        function="add_parser",
    ),
)
"""The flows of `streamml run`, in the order its help lists them."""


def add_error_count_options(p: argparse.ArgumentParser) -> None:
    """Add the options of the error-count flow shared by `run` and `bench`."""
    src = p.add_argument_group("source")
    src.add_argument(
        "--source",
        choices=["file", "generate", "kafka"],
        default="file",
        help="read files (--input), generate a seeded stream (--events/--accounts/--seed) or "
        "read a Kafka topic (--brokers/--topic)",
    )
    kafka = p.add_argument_group(
        "kafka",
        "Kafka source and outputs; security settings come from STREAMML_KAFKA_SECURITY_PROTOCOL, "
        "STREAMML_KAFKA_SASL_*, STREAMML_KAFKA_SSL_* (see README)",
    )
    kafka.add_argument("--brokers", help="bootstrap servers HOST:PORT[,HOST:PORT...]")
    kafka.add_argument("--topic", help="topic of signal-error events")
    kafka.add_argument(
        "--start",
        choices=["stored", "earliest", "latest"],
        default="stored",
        help="where to start: the position in the recovery snapshot, or the topic's ends",
    )
    kafka.add_argument(
        "--stop-at-end",
        action="store_true",
        help="read up to the end offsets present at start, then finish (backfills)",
    )
    kafka.add_argument(
        "--group-id",
        help="commit the positions of each snapshot to this consumer group, so Kafka tools show "
        "the flow's lag (monitoring only: the flow resumes from its snapshots, not from commits)",
    )
    add_kafka_client_option(kafka)
    kafka.add_argument("--alerts-topic", help="also write alerts to this topic")
    kafka.add_argument("--dead-letters-topic", help="also write dead letters to this topic")
    src.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="PATH",
        help="input file, JSON lines or CSV (header account,ts,code); repeat for several files",
    )
    src.add_argument(
        "--format", choices=["csv", "jsonl"], help="input format (default: .csv files are CSV)"
    )
    src.add_argument(
        "--settle-ms",
        type=int,
        default=DEFAULT_SETTLE_MS,
        help="a last line without a newline is read once its file has not changed for this long "
        "(0: the files are complete now); until then it is held back, and read once complete",
    )
    src.add_argument(
        "--reset-source",
        action="append",
        default=[],
        metavar="PATH|kafka:TOPIC",
        help="read this input again from its start as a new input (its events are counted "
        "again): for a file truncated in place, or a topic that was deleted and created again",
    )
    src.add_argument("--events", type=int, default=1_000_000, help="events to generate")
    src.add_argument("--accounts", type=int, default=100_000, help="distinct accounts to generate")
    src.add_argument("--seed", type=int, default=7, help="generator seed")
    feat = p.add_argument_group("feature")
    feat.add_argument(
        "--threshold", type=int, default=2000, help="alert when the count goes above this"
    )
    feat.add_argument(
        "--bucket-ms", type=int, default=3_600_000, help="bucket length in ms (fixed per state dir)"
    )
    feat.add_argument(
        "--window-buckets", type=int, default=24, help="buckets per window (fixed per state dir)"
    )
    feat.add_argument(
        "--shards", type=int, default=16, help="state shards (fixed when the state dir is created)"
    )
    feat.add_argument(
        "--shard-hash",
        choices=("crc32", "murmur2"),
        default="crc32",
        help="how an account's shard is chosen (fixed when the state dir is created): murmur2 is "
        "Kafka's default key partitioner, which --routing partition needs (default: crc32)",
    )
    feat.add_argument(
        "--routing",
        choices=("exchange", "partition"),
        default="exchange",
        help="exchange: each shard's batches go to the process Bytewax hashes the shard to, "
        "wherever they were read (any input). partition: for input already partitioned by "
        "account (a topic keyed by account with Kafka's default partitioner, or files written "
        "by `streamml generate --files N --by-key`, given in order), each shard stays in the "
        "process that reads its partition and no shard batch crosses processes; needs "
        "--shard-hash murmur2 and a shard count that the partition count divides, and refuses "
        "an account that arrives on another partition (default: exchange)",
    )


def add_cluster_options(p: argparse.ArgumentParser) -> None:
    """Add the options that make this run one process of a cluster over several hosts."""
    cluster = p.add_argument_group(
        "several hosts",
        "Run this as one process of a cluster spread over several hosts (or pods): every "
        "host runs the same command with its own process id and the same --addresses. Each "
        "process keeps the state of the shards it owns under its own --state-dir and "
        "--recovery-dir; the process count is fixed for the life of that state (see README, "
        "Deploying on Kubernetes).",
    )
    ident = cluster.add_mutually_exclusive_group()
    ident.add_argument("--process-id", type=int, help="this process's id in the cluster, from 0")
    ident.add_argument(
        "--process-id-from-hostname",
        action="store_true",
        help="take the process id from the -ORDINAL ending $HOSTNAME (a StatefulSet pod's name)",
    )
    cluster.add_argument(
        "--addresses",
        metavar="HOST:PORT;HOST:PORT...",
        help="the address of every process of the cluster, in process-id order; this process "
        "listens on its own",
    )


def cluster_from_args(args: argparse.Namespace) -> ClusterMember | None:
    """Return this process's place in a cluster from the parsed options, or None.

    Raises ValueError when the options do not fit together (also with ``--processes`` > 1).
    """
    from streamml.cluster import cluster_member

    member = cluster_member(
        process_id=getattr(args, "process_id", None),
        from_hostname=getattr(args, "process_id_from_hostname", False),
        addresses=getattr(args, "addresses", None),
    )
    if member is not None and getattr(args, "processes", 1) != 1:
        raise ValueError(
            "--processes runs several processes on this machine; with --addresses each host "
            "runs one process of the cluster (leave --processes out)"
        )
    return member


def register(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    path: Sequence[str] | None = None,
) -> None:
    """Add `streamml run`: fully the flow `path` names (every one when None)."""
    run = sub.add_parser(
        "run",
        help="run a flow (error-count, predict, features, outcomes)",
        description="Run a dataflow to its end.",
    )
    flows = run.add_subparsers(dest="flow", metavar="FLOW", required=True)
    add_commands(flows, FLOWS, path)


def add_error_count_parser(flows: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `streamml run error-count`."""
    p = flows.add_parser(
        "error-count",
        help="rolling 24-hour signal-error count per account, with alerts",
        description=(
            "Count each account's signal errors over the trailing window (24 hourly buckets by "
            "default), keep the counts in the online store under --state-dir, append every update "
            "to the history store and alert when an account goes above the threshold. Runs to the "
            "end of the input; running again with the same --state-dir continues from the stored "
            "state, and records already applied are not counted twice."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_error_count_options(p)
    out = p.add_argument_group("state and outputs")
    out.add_argument("--state-dir", required=True, type=Path, help="RocksDB state / online store")
    out.add_argument("--alerts-out", type=Path, help="append alerts here as JSON lines")
    out.add_argument("--dead-letters-out", type=Path, help="append dead letters here (JSON lines)")
    out.add_argument("--late-out", type=Path, help="append late events here (JSON lines)")
    out.add_argument(
        "--history-dir", type=Path, help="history store root (default: STATE_DIR/history)"
    )
    out.add_argument("--no-history", action="store_true", help="do not write the history store")
    out.add_argument("--processes", type=int, default=1, help="worker processes on this machine")
    out.add_argument(
        "--state-memory-mb",
        type=int,
        default=argparse.SUPPRESS,
        help="RocksDB memory of each process: one block cache holding the memtables of all its "
        "shards too (default: 256)",
    )
    out.add_argument("--json", action="store_true", help="print the summary as JSON")
    rec = p.add_argument_group(
        "recovery",
        "Snapshot source positions so a restarted run resumes where the last snapshot left off; "
        "every count stays exact (records already applied are skipped, and what they emitted is "
        "emitted again from the state). Use one recovery dir per state dir.",
    )
    rec.add_argument(
        "--recovery-dir", type=Path, help="Bytewax recovery directory (created when missing)"
    )
    rec.add_argument(
        "--snapshot-interval", type=int, default=10, help="whole seconds between snapshots"
    )
    add_cluster_options(p)
    p.set_defaults(func=_cmd_error_count)


def config_from_args(args: argparse.Namespace, stats_path: Path | None) -> ErrorCountConfig:
    """Build the flow config from parsed arguments; raises ValueError on bad input."""
    from streamml.dataflows.error_count import ErrorCountConfig, SourceConfig
    from streamml.operators.sources import GeneratorConfig, detect_format, read_csv_header

    if args.source == "file":
        if not args.input:
            raise ValueError("--source file needs --input PATH (or use --source generate)")
        for path in args.input:
            if not Path(path).is_file():
                raise ValueError(f"input file not found: {path}")
            fmt = args.format or detect_format(path)
            if fmt == "csv":
                header, _ = read_csv_header(path)
                if "account" not in header or "ts" not in header:
                    raise ValueError(
                        f"{path}: CSV header {list(header)} must name the columns account and ts "
                        "(expected: account,ts,code)"
                    )
    flags = {
        "BROKERS": "brokers",
        "TOPIC": "topic",
        "START": "start",
        "GROUP_ID": "group_id",
        "CLIENT": "kafka_client",
        "ALERTS_TOPIC": "alerts_topic",
        "DEAD_LETTERS_TOPIC": "dead_letters_topic",
    }
    settings: dict[str, object] = {var: getattr(args, f, None) for var, f in flags.items()}
    settings["STOP_AT_END"] = getattr(args, "stop_at_end", False) and "1"
    kafka_env = kafka_env_with(settings)
    needs_brokers = args.source == "kafka" or args.alerts_topic or args.dead_letters_topic
    if needs_brokers and not kafka_env.get(KAFKA_PREFIX + "BROKERS"):
        raise ValueError("Kafka needs --brokers HOST:PORT (or STREAMML_KAFKA_BROKERS)")
    if args.source == "kafka" and not kafka_env.get(KAFKA_PREFIX + "TOPIC"):
        raise ValueError("--source kafka needs --topic NAME")
    if args.events < 0 or args.accounts < 1:
        raise ValueError("--events must be >= 0 and --accounts >= 1")
    if args.processes < 1:
        raise ValueError("--processes must be >= 1")
    if args.settle_ms < 0:
        raise ValueError("--settle-ms must be >= 0")
    memory = {}
    if getattr(args, "state_memory_mb", None) is not None:
        if args.state_memory_mb < 8:
            raise ValueError("--state-memory-mb must be >= 8")
        memory["state_memory_bytes"] = args.state_memory_mb << 20
    if getattr(args, "recovery_dir", None) is not None and args.snapshot_interval < 1:
        raise ValueError("--snapshot-interval must be >= 1 second")
    source = SourceConfig(
        kind=args.source,
        paths=tuple(str(Path(p).resolve()) for p in args.input),
        fmt=args.format,
        generator=GeneratorConfig(events=args.events, accounts=args.accounts, seed=args.seed),
    )
    layout = StateLayout(
        shards=args.shards,
        bucket_ms=args.bucket_ms,
        window_buckets=args.window_buckets,
        shard_hash=args.shard_hash,
    )
    state_dir = Path(args.state_dir).resolve()
    history = None
    if not getattr(args, "no_history", True):
        history = args.history_dir or state_dir / "history"
    return ErrorCountConfig(
        source=source,
        state_dir=state_dir,
        layout=layout,
        threshold=args.threshold,
        alerts_out=getattr(args, "alerts_out", None),
        dead_letters_out=getattr(args, "dead_letters_out", None),
        late_out=getattr(args, "late_out", None),
        history_dir=history,
        stats_path=stats_path,
        kafka_env=tuple(sorted(kafka_env.items())),
        recovery_dir=Path(args.recovery_dir).resolve()
        if getattr(args, "recovery_dir", None)
        else None,
        settle_ms=args.settle_ms,
        routing=args.routing,
        **memory,
    )


def summary_rows(result: RunResult) -> list[tuple[str, str]]:
    """Return the summary of a run as (name, value) rows."""
    c = result.counters
    rows = [
        ("events read", human(c.get("read", 0))),
        ("accepted", human(c.get("accepted", 0))),
        ("late (not counted)", human(c.get("late", 0))),
        ("already applied (skipped)", human(c.get("skipped", 0))),
        ("replayed after a restart", human(c.get("replayed", 0))),
        ("dead letters", human(c.get("dead", 0))),
    ]
    if c.get("held_back"):
        n = c["held_back"]
        rows.append(("held back", f"{n} incomplete line{'s' if n != 1 else ''}"))
    for key in sorted(k for k in c if k.startswith("dead.")):
        rows.append((f"  {key.removeprefix('dead.')}", human(c[key])))
    rows += [
        ("alerts", human(c.get("alerts", 0))),
        *cost_rows(result, "events/s", c.get("read", 0)),
    ]
    return rows


def _cmd_error_count(args: argparse.Namespace) -> int:
    from streamml.jobs import run_error_count
    from streamml.processes import stop_on_sigterm

    stop_on_sigterm()
    with tempfile.TemporaryDirectory(prefix="streamml-run-") as tmp:
        try:
            member = cluster_from_args(args)
            config = config_from_args(args, Path(tmp) / "stats.json")
            resets = tuple(
                r if r.startswith("kafka:") else str(Path(r).resolve()) for r in args.reset_source
            )
            result = run_error_count(
                config,
                processes=args.processes,
                recovery_dir=args.recovery_dir,
                snapshot_interval_s=args.snapshot_interval,
                reset_sources=resets,
                member=member,
            )
        except (ValueError, RefusedError) as exc:
            print(f"streamml run error-count: {exc}", file=sys.stderr)
            return 2
    return report_run("run error-count", result, summary_rows(result), as_json=args.json)
