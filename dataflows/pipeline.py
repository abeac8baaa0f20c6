"""The pipeline of one declared source (read, decode, shard, aggregate) and the flows' outputs.

`add_source` adds a source's steps to a dataflow and `add_outputs` the outputs every feature
flow shares: alerts, dead letters and late events (JSON lines files, Kafka topics), the history
store and the run counters. `streamml.dataflows.features` builds a flow of every source of a
definition file with them, and `streamml.dataflows.error_count` the one-source case. The checks
that tie a state dir, its recovery dir and its inputs together before a run live here too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bytewax import operators as op
from bytewax.dataflow import Dataflow, Stream
from streamml.dataflows.environment import KAFKA_PREFIX, kafka_sink
from streamml.operators.decode import Decoded, decode_events
from streamml.operators.decode_source import SourceSchema, decode_source_events
from streamml.operators.recovery_state import (
    bind_recovery_dir,
    check_output_file,
    recovery_binding,
)
from streamml.operators.rolling import RollingConfig, ShardUpdate, rolling_count
from streamml.operators.routing import ROUTINGS
from streamml.operators.shard import shard_events
from streamml.operators.sinks import HistorySink, JsonLinesSink, StatsSink
from streamml.operators.sources import FileSource, GeneratorConfig, GeneratorSource
from streamml.state.errors import RefusedError
from streamml.state.layout import StateLayout
from streamml.state.rolling_store import stored_positions
from streamml.state.sources import SourceRegistry

__all__ = [
    "SourceInput",
    "SourceStreams",
    "add_outputs",
    "add_source",
    "check_fresh_recovery",
    "check_recovery",
    "reset_inputs",
]


@dataclass(frozen=True, slots=True)
class SourceInput:
    """Where one source's events come from in this run."""

    name: str
    kind: str = "file"
    paths: tuple[str, ...] = ()
    fmt: str | None = None
    topic: str | None = None
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    chunk_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("file", "generate", "kafka"):
            raise ValueError(
                f"{self.name}: kind must be file, generate or kafka, got {self.kind!r}"
            )
        if self.kind == "file" and not self.paths:
            raise ValueError(f"{self.name}: a file source needs input paths")
        if self.kind == "kafka" and not self.topic:
            raise ValueError(f"{self.name}: a Kafka source needs a topic")
        if self.fmt not in (None, "csv", "jsonl"):
            raise ValueError(f"{self.name}: format must be csv or jsonl, got {self.fmt!r}")


def _decode_stats(d: Decoded) -> dict[str, int]:
    stats = {"read": d.read, "bytes": d.bytes_read, "valid": len(d.events), "dead": len(d.dead)}
    if d.held_back:
        stats["held_back"] = d.held_back
    if d.filtered:
        stats["filtered"] = d.filtered
    for reason, n in d.reasons().items():
        stats[f"dead.{reason}"] = n
    return stats


def _update_stats(u: ShardUpdate) -> dict[str, int]:
    stats = {**u.counts(), "skipped": u.skipped, "replayed": u.replayed}
    if u.crossed:
        stats["crossed_batches"] = u.crossed
        stats["crossed_events"] = u.crossed_events
    return stats


def _late_records(u: ShardUpdate) -> list[dict[str, object]]:
    late = u.late_rows()
    return [
        {"account": a.decode("utf-8"), "ts": t, "partition": u.partition, "position": p}
        for a, t, p in zip(
            late.column("account").to_pylist(),
            late.column("ts").to_pylist(),
            late.column("position").to_pylist(),
            strict=True,
        )
    ]


def _one_key(step_id: str, stream):
    """Key every item alike: single-partition sinks then get every item on one worker."""
    return op.key_on(step_id, stream, lambda _item: "all")


@dataclass(frozen=True)
class SourceStreams:
    """What one source's pipeline gives the outputs of the flow."""

    decoded: Stream
    dead: Stream
    by_shard: Stream
    updates: Stream
    rolling: RollingConfig


def _open_source(
    inp: SourceInput,
    *,
    state_dir: Path,
    shards: int,
    recovery_dir: Path | None,
    settle_ms: int,
    kafka_env: tuple[tuple[str, str], ...],
):
    where = {"state_dir": state_dir, "shards": shards, "recovery_dir": recovery_dir}
    if inp.kind == "file":
        chunk = {} if inp.chunk_bytes is None else {"chunk_bytes": inp.chunk_bytes}
        return FileSource(list(inp.paths), fmt=inp.fmt, settle_ms=settle_ms, **chunk, **where)
    if inp.kind == "generate":
        return GeneratorSource(inp.generator)
    from streamml.operators.kafka import KafkaSource, KafkaSourceConfig

    env = dict(kafka_env)
    if inp.topic:
        env[KAFKA_PREFIX + "TOPIC"] = inp.topic
    return KafkaSource(KafkaSourceConfig.from_env(env=env), **where)


def _fed_by(owner_of, shards: int):
    def fed_by(name: str) -> range:
        index, count = owner_of(name)
        return range(index, shards, count)

    return fed_by


def add_source(
    flow: Dataflow,
    prefix: str,
    inp: SourceInput,
    rolling: RollingConfig,
    *,
    schema: SourceSchema | None,
    settle_ms: int,
    kafka_env: tuple[tuple[str, str], ...],
    routing: str = "exchange",
) -> SourceStreams:
    """Add one source's pipeline (read, decode, shard, aggregate) to `flow`.

    `prefix` starts every step id of the source (``""`` for a flow of one source). `schema`
    decodes the source's events; None uses the signal-error decoder. `routing` is ``exchange``
    or ``partition`` (see `streamml.operators.shard`): with ``partition`` each shard's state
    stays in the process reading the file or topic partition its accounts come from.
    """
    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {', '.join(ROUTINGS)}, got {routing!r}")
    source = _open_source(
        inp,
        state_dir=rolling.state_dir,
        shards=rolling.layout.shards,
        recovery_dir=rolling.recovery_dir,
        settle_ms=settle_ms,
        kafka_env=kafka_env,
    )
    raw = op.input(f"{prefix}source", flow, source)
    if schema is None:
        decoded = decode_events(f"{prefix}decode", raw)
    else:
        decoded = decode_source_events(f"{prefix}decode", raw, schema)
    layout = rolling.layout
    owner_of = None
    if routing == "partition":
        if not hasattr(source, "partition_owner"):
            raise RefusedError(
                f"{inp.name}: partition routing needs a file or Kafka source, got {inp.kind}; "
                "use --routing exchange"
            )
        owner_of = source.partition_owner
        source.stored.fed_by = _fed_by(owner_of, layout.shards)
    keyed = shard_events(
        f"{prefix}shard", decoded.events, layout.shards, layout.shard_hash, owner_of
    )
    by_shard = rolling_count(f"{prefix}rolling", keyed, rolling)
    updates = op.key_rm(f"{prefix}unkey", by_shard)
    return SourceStreams(decoded.decoded, decoded.dead, by_shard, updates, rolling)


_FILE_OUTPUTS = {
    "alerts_out": "alerts-out",
    "dead_letters_out": "dead-letters-out",
    "late_out": "late-out",
}
"""The JSON lines outputs: config field -> step id of the sink (its snapshots are keyed by it)."""


def add_outputs(
    config,
    streams: list[SourceStreams],
    history_pipeline_version: str,
) -> None:
    """Add the shared outputs (alerts, dead letters, late events, history, stats) of `streams`.

    `config` has the fields `alerts_out`, `dead_letters_out`, `late_out`, `history_dir`,
    `stats_path`, `recovery_dir` and `kafka_env` (an `ErrorCountConfig` or `FeaturesConfig`).
    """

    def merged(step: str, items: list[Stream]) -> Stream:
        return items[0] if len(items) == 1 else op.merge(step, *items)

    updates = merged("updates", [s.updates for s in streams])
    dead = merged("dead", [s.dead for s in streams])
    alerts = op.flat_map("alerts", updates, lambda u: u.alerts)

    def json_lines(field_name: str, stream) -> None:
        step = _FILE_OUTPUTS[field_name]
        sink = JsonLinesSink(getattr(config, field_name), recovery_dir=config.recovery_dir)
        op.output(step, _one_key(f"{step}-key", stream), sink)

    if config.alerts_out is not None:
        json_lines("alerts_out", alerts)
    alerts_kafka = kafka_sink(config.kafka_env, "ALERTS_TOPIC")
    if alerts_kafka is not None:
        from streamml.operators.kafka import KafkaAlertSink

        op.output("alerts-kafka", alerts, KafkaAlertSink(alerts_kafka))
    dead_kafka = kafka_sink(config.kafka_env, "DEAD_LETTERS_TOPIC")
    if dead_kafka is not None:
        from streamml.operators.kafka import KafkaDeadLetterSink

        op.output("dead-letters-kafka", dead, KafkaDeadLetterSink(dead_kafka))
    if config.dead_letters_out is not None:
        json_lines("dead_letters_out", dead)
    if config.late_out is not None:
        json_lines("late_out", op.flat_map("late", updates, _late_records))
    if config.history_dir is not None:
        for s in streams:
            step = (
                "history" if len(streams) == 1 else f"{s.rolling.features[0].source.name}-history"
            )
            op.output(
                step,
                s.by_shard,
                HistorySink(
                    config.history_dir,
                    s.rolling.definitions,
                    history_pipeline_version,
                    shards=s.rolling.layout.shards,
                    recovery_dir=config.recovery_dir,
                ),
            )
    decode_stats = merged("decoded", [s.decoded for s in streams])
    stats = op.merge(
        "stats",
        op.map("decode-stats", decode_stats, _decode_stats),
        op.map("update-stats", updates, _update_stats),
    )
    op.output("stats-out", _one_key("stats-key", stats), StatsSink(config.stats_path))


def check_recovery(
    recovery_dir: Path | None, state_dir: Path, shards: int, flow_name: str, config
) -> None:
    """Tie the recovery dir to the state dir and check the output files (see `prepare_state`)."""
    if recovery_dir is None:
        return
    positions = stored_positions(state_dir, shards)
    fresh = not any(p >= 0 for p in positions.values())
    bind_recovery_dir(recovery_dir, state_dir, fresh_state=fresh)
    for field_name, step in _FILE_OUTPUTS.items():
        path = getattr(config, field_name)
        if path is not None:
            check_output_file(recovery_dir, f"{flow_name}.{step}", path)


def check_fresh_recovery(recovery_dir: Path | None, state_dir: Path) -> None:
    """Refuse a recovery dir whose state dir was deleted (before the state dir is created)."""
    if recovery_dir is None or StateLayout.read(state_dir) is not None:
        return
    bound = recovery_binding(recovery_dir)
    if bound is not None:
        raise RefusedError(
            f"recovery dir {recovery_dir} belongs to state dir {bound['state_dir']} "
            f"(id {bound['state_id']}), but {state_dir} holds no state: it was "
            "deleted or moved, so resuming would skip input that is no longer counted. "
            "Restore the state dir, or start over with `streamml recovery reset "
            f"{recovery_dir} --state-dir {state_dir}`"
        )


def reset_inputs(state_dir: Path, reset_sources: tuple[str, ...]) -> None:
    """Start new incarnations of inputs (paths, or ``kafka:TOPIC``), read again from the start."""
    registry = SourceRegistry(state_dir)
    for item in reset_sources:
        if item.startswith("kafka:"):
            registry.resolve_stream(item, reset=True)
        else:
            registry.resolve_file(item, reset=True)
