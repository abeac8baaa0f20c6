r"""Features from a definition file: every source and feature of it in one dataflow.

Run it with ``streamml run features ...`` or directly with Bytewax::

    STREAMML_DEFINITIONS=features.toml STREAMML_STATE_DIR=state \
    STREAMML_SOURCES=signal_errors,speed_tests \
    STREAMML_INPUT__signal_errors=errors.csv STREAMML_INPUT__speed_tests=tests.jsonl \
        python -m bytewax.run streamml.dataflows.features:flow

Each source is read, decoded against its definition (dead letters name the field), sharded by
entity and applied to one state record per entity holding all of its features (one RocksDB read
and one write per entity and batch). Alerts, dead letters and late events of every source go to
the same outputs; each feature's accepted updates go to the history store under its name and
version; features marked ``postgres`` are upserted into PostgreSQL in the same step.

Environment variables (besides those of `streamml.dataflows.error_count` for the outputs,
recovery and Kafka):

============================  =====================================================  ==========
variable                      meaning                                                default
============================  =====================================================  ==========
STREAMML_DEFINITIONS          the definition file (TOML)                             bundled
STREAMML_SOURCES              the sources to run, comma-separated                    (required)
STREAMML_SOURCE__NAME         ``file``, ``kafka`` or ``generate`` for source NAME    its kind
STREAMML_INPUT__NAME          input files of source NAME, separated by ``:``
STREAMML_TOPIC__NAME          Kafka topic of source NAME
STREAMML_FORMAT__NAME         ``csv`` or ``jsonl`` (default: the definition's)
STREAMML_POSTGRES_DSN         PostgreSQL for features marked ``postgres``            none
============================  =====================================================  ==========
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from bytewax import operators as op
from bytewax.dataflow import Dataflow, Stream
from streamml.dataflows.environment import KAFKA_PREFIX, Env, kafka_sink
from streamml.operators.decode import Decoded, decode_events
from streamml.operators.decode_source import SourceSchema, decode_source_events
from streamml.operators.recovery_state import (
    bind_recovery_dir,
    check_output_file,
    recovery_binding,
)
from streamml.operators.rolling import RollingConfig, ShardUpdate, rolling_count
from streamml.operators.shard import shard_events
from streamml.operators.sinks import HistorySink, JsonLinesSink, StatsSink
from streamml.operators.sources import (
    DEFAULT_SETTLE_MS,
    FileSource,
    GeneratorConfig,
    GeneratorSource,
)
from streamml.state.definitions import (
    Definitions,
    FeatureDef,
    SourceDef,
    default_definitions,
    load_definitions,
)
from streamml.state.errors import RefusedError
from streamml.state.feature_manifest import StoredSource, register_sources
from streamml.state.layout import StateLayout
from streamml.state.rolling_store import stored_positions
from streamml.state.sources import SourceRegistry

__all__ = [
    "FeaturesConfig",
    "SourceInput",
    "add_source",
    "build_flow",
    "is_classic",
    "prepare_features_state",
]

PIPELINE_VERSION = "features/1"


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


@dataclass(frozen=True, slots=True)
class FeaturesConfig:
    """Everything the features flow needs; built once from CLI flags or the environment."""

    inputs: tuple[SourceInput, ...]
    state_dir: Path
    definitions_path: Path | None = None
    shards: int = 16
    alerts_out: Path | None = None
    dead_letters_out: Path | None = None
    late_out: Path | None = None
    history_dir: Path | None = None
    stats_path: Path | None = None
    pipeline_version: str = PIPELINE_VERSION
    kafka_env: tuple[tuple[str, str], ...] = ()
    recovery_dir: Path | None = None
    settle_ms: int = DEFAULT_SETTLE_MS
    postgres_dsn: str | None = None

    def definitions(self) -> Definitions:
        """Return the definitions (the bundled ones without a path)."""
        if self.definitions_path is None:
            return default_definitions()
        return load_definitions(self.definitions_path)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> FeaturesConfig:
        """Build the config from ``STREAMML_*`` variables (see the module docstring)."""
        env = os.environ if env is None else env
        e = Env(env)
        state_dir = e.path("STATE_DIR")
        if state_dir is None:
            raise ValueError("STREAMML_STATE_DIR is required: the directory of the feature state")
        names = [n.strip() for n in (e.get("SOURCES") or "").split(",") if n.strip()]
        if not names:
            raise ValueError("STREAMML_SOURCES names no source to run")
        inputs = []
        for name in names:
            paths = e.get(f"INPUT__{name}")
            chunk = e.get("CHUNK_BYTES")
            inputs.append(
                SourceInput(
                    name=name,
                    kind=e.get(f"SOURCE__{name}", "file") or "file",
                    paths=tuple(paths.split(os.pathsep)) if paths else (),
                    fmt=e.get(f"FORMAT__{name}"),
                    topic=e.get(f"TOPIC__{name}"),
                    generator=GeneratorConfig(
                        events=int(e.get("EVENTS", "1000000") or 0),
                        accounts=int(e.get("ACCOUNTS", "100000") or 1),
                        seed=int(e.get("SEED", "7") or 0),
                    ),
                    chunk_bytes=int(chunk) if chunk else None,
                )
            )
        return cls(
            inputs=tuple(inputs),
            state_dir=state_dir,
            definitions_path=e.path("DEFINITIONS"),
            shards=int(e.get("SHARDS", "16") or 16),
            alerts_out=e.path("ALERTS_OUT"),
            dead_letters_out=e.path("DEAD_LETTERS_OUT"),
            late_out=e.path("LATE_OUT"),
            history_dir=e.history_dir(state_dir),
            stats_path=e.path("STATS_PATH"),
            pipeline_version=e.get("PIPELINE_VERSION", PIPELINE_VERSION) or PIPELINE_VERSION,
            kafka_env=e.kafka(),
            recovery_dir=e.path("RECOVERY_DIR"),
            settle_ms=int(e.get("SETTLE_MS", str(DEFAULT_SETTLE_MS)) or 0),
            postgres_dsn=e.get("POSTGRES_DSN"),
        )

    def to_env(self) -> dict[str, str]:
        """Return the ``STREAMML_*`` variables that `from_env` turns back into this config."""
        env = {
            "DEFINITIONS": str(self.definitions_path or ""),
            "SOURCES": ",".join(i.name for i in self.inputs),
            "STATE_DIR": str(self.state_dir),
            "SHARDS": str(self.shards),
            "ALERTS_OUT": str(self.alerts_out or ""),
            "DEAD_LETTERS_OUT": str(self.dead_letters_out or ""),
            "LATE_OUT": str(self.late_out or ""),
            "HISTORY_DIR": str(self.history_dir) if self.history_dir else "off",
            "STATS_PATH": str(self.stats_path or ""),
            "PIPELINE_VERSION": self.pipeline_version,
            "RECOVERY_DIR": str(self.recovery_dir or ""),
            "SETTLE_MS": str(self.settle_ms),
            "POSTGRES_DSN": self.postgres_dsn or "",
        }
        if self.inputs:
            g = self.inputs[0].generator
            env |= {"EVENTS": str(g.events), "ACCOUNTS": str(g.accounts), "SEED": str(g.seed)}
            env["CHUNK_BYTES"] = str(self.inputs[0].chunk_bytes or "")
        for i in self.inputs:
            env[f"SOURCE__{i.name}"] = i.kind
            env[f"INPUT__{i.name}"] = os.pathsep.join(i.paths)
            env[f"FORMAT__{i.name}"] = i.fmt or ""
            env[f"TOPIC__{i.name}"] = i.topic or ""
        return {**{f"STREAMML_{k}": v for k, v in env.items()}, **dict(self.kafka_env)}


def is_classic(source: SourceDef, features: tuple[FeatureDef, ...]) -> bool:
    """Whether `source` reads signal-error events: ``account`` and epoch-ms ``ts``, nothing else.

    Those are decoded by the signal-error decoder (`streamml.operators.decode`), whose CSV path
    parses columns with numpy.
    """
    return (
        source.key == "account"
        and source.time == "ts"
        and source.time_format == "epoch_ms"
        and not source.filters
        and all(f.field is None for f in features)
    )


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
    return {**u.counts(), "skipped": u.skipped, "replayed": u.replayed}


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


def add_source(
    flow: Dataflow,
    prefix: str,
    inp: SourceInput,
    rolling: RollingConfig,
    *,
    schema: SourceSchema | None,
    settle_ms: int,
    kafka_env: tuple[tuple[str, str], ...],
) -> SourceStreams:
    """Add one source's pipeline (read, decode, shard, aggregate) to `flow`.

    `prefix` starts every step id of the source (``""`` for a flow of one source). `schema`
    decodes the source's events; None uses the signal-error decoder.
    """
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
    keyed = shard_events(f"{prefix}shard", decoded.events, rolling.layout.shards)
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


def _selected(config: FeaturesConfig) -> dict[str, tuple[FeatureDef, ...]]:
    defs = config.definitions()
    out = {}
    for inp in config.inputs:
        if inp.name not in defs.sources:
            known = ", ".join(defs.sources)
            raise ValueError(f"{defs.path} has no source {inp.name!r} (its sources: {known})")
        features = defs.of_source(inp.name)
        if not features:
            raise ValueError(f"{defs.path}: no feature reads source {inp.name!r}")
        if inp.kind == "generate" and not is_classic(defs.sources[inp.name], features):
            raise ValueError(
                f"{inp.name}: the generator writes signal-error events (account, ts); this "
                "source's features read other fields: give it files or a topic"
            )
        out[inp.name] = features
    return out


def prepare_features_state(
    config: FeaturesConfig, *, reset_sources: tuple[str, ...] = ()
) -> dict[str, StoredSource]:
    """Create or check the state dir for the definitions, before anything is read.

    Refuses (`RefusedError`, nothing applied) definitions that would reinterpret stored state,
    a state dir made with other settings, and a recovery dir of another state dir.
    """
    selected = _selected(config)
    check_fresh_recovery(config.recovery_dir, config.state_dir)
    stored_layout = StateLayout.read(config.state_dir)
    layout = StateLayout(shards=config.shards)
    if stored_layout is not None:
        layout = replace(stored_layout, shards=config.shards)
    layout.ensure(config.state_dir)
    stored = register_sources(config.state_dir, selected, ids={"signal_errors": layout.feature_id})
    reset_inputs(config.state_dir, reset_sources)
    check_recovery(config.recovery_dir, config.state_dir, config.shards, "features", config)
    return stored


def build_flow(config: FeaturesConfig) -> Dataflow:
    """Build the features dataflow for `config` (see `prepare_features_state`)."""
    stored = prepare_features_state(config)
    layout = StateLayout.read(config.state_dir)
    assert layout is not None
    flow = Dataflow("features")
    streams = []
    for inp in config.inputs:
        src = stored[inp.name]
        if inp.fmt is None and inp.kind == "file":
            csv = all(p.lower().endswith(".csv") for p in inp.paths)
            inp = replace(inp, fmt="csv" if csv else src.source.format)
        prefix = f"{inp.name}-"
        rolling = RollingConfig(
            config.state_dir,
            layout,
            recovery_dir=config.recovery_dir,
            source_step=f"features.{prefix}source",
            replay_accepted=config.history_dir is not None,
            replay_late=config.late_out is not None,
            features=src.features,
            source_id=src.id,
            postgres_dsn=config.postgres_dsn,
        )
        schema = None
        if not is_classic(src.source, src.features):
            schema = SourceSchema.of(src.source, src.features)
        streams.append(
            add_source(
                flow,
                prefix,
                inp,
                rolling,
                schema=schema,
                settle_ms=config.settle_ms,
                kafka_env=config.kafka_env,
            )
        )
    add_outputs(config, streams, config.pipeline_version)
    return flow


def __getattr__(name: str) -> Dataflow:
    if name == "flow":
        return build_flow(FeaturesConfig.from_env())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
