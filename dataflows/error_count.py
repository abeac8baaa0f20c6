r"""The rolling 24-hour signal-error count: events in, online feature, alerts and history out.

Run it with ``streamml run error-count ...`` or directly with Bytewax::

    STREAMML_SOURCE=file STREAMML_INPUT=errors.csv STREAMML_STATE_DIR=state \
        python -m bytewax.run streamml.dataflows.error_count:flow

Environment variables (the CLI sets the same ones for the processes it starts):

============================  =====================================================  ==========
variable                      meaning                                                default
============================  =====================================================  ==========
STREAMML_SOURCE               ``file``, ``generate`` or ``kafka``                    ``file``
STREAMML_INPUT                input files, separated by ``:``                        (required
                                                                                     for file)
STREAMML_FORMAT               ``csv`` or ``jsonl`` (default: by file extension)
STREAMML_EVENTS               generated events                                       1000000
STREAMML_ACCOUNTS             generated distinct accounts                            100000
STREAMML_SEED                 generator seed                                         7
STREAMML_STATE_DIR            RocksDB state and online store                         (required)
STREAMML_SHARDS               state shards (fixed when the state dir is created)     16
STREAMML_STATE_MEMORY_MB      RocksDB memory of a process (block cache and           256
                              memtables of all its shards)
STREAMML_BUCKET_MS            bucket length in ms                                    3600000
STREAMML_WINDOW_BUCKETS       buckets per window                                     24
STREAMML_THRESHOLD            alert when the count goes above this                   2000
STREAMML_ALERTS_OUT           JSON lines file of alerts                              none
STREAMML_DEAD_LETTERS_OUT     JSON lines file of dead letters                        none
STREAMML_LATE_OUT             JSON lines file of late events                         none
STREAMML_HISTORY_DIR          history store root (Parquet by day); ``off`` disables  STATE/history
STREAMML_STATS_PATH           JSON file of run counters, rewritten while running     none
STREAMML_PIPELINE_VERSION     version written with every history row                 package version
STREAMML_RECOVERY_DIR         the Bytewax recovery dir (``-r``) when run with one:  none
                              what each batch emitted is kept so a replay emits it
                              again, and output files are cut back on resume
STREAMML_SETTLE_MS            a last line without a newline is read once its file    10000
                              has not changed for this long (0: files are complete)
STREAMML_CHUNK_BYTES          bytes the file source reads at a time (whole lines)    16777216
STREAMML_KAFKA_*              Kafka source and sinks (see `streamml.operators.kafka`):
                              ``BROKERS``, ``TOPIC``, ``START``, ``STOP_AT_END``,
                              ``ALERTS_TOPIC``, ``DEAD_LETTERS_TOPIC`` and the
                              security settings (``SECURITY_PROTOCOL``, ``SASL_*``,
                              ``SSL_*``)
============================  =====================================================  ==========
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bytewax import operators as op
from bytewax.dataflow import Dataflow
from streamml.dataflows.environment import Env, kafka_sink
from streamml.operators.decode import Decoded, decode_events
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
from streamml.state.errors import RefusedError
from streamml.state.layout import StateLayout
from streamml.state.rolling_store import StoreTuning, stored_positions
from streamml.state.sources import SourceRegistry

__all__ = ["ErrorCountConfig", "SourceConfig", "build_flow", "prepare_state"]

PIPELINE_VERSION = "error_count/1"


@dataclass(frozen=True, slots=True)
class SourceConfig:
    """Where events come from."""

    kind: str = "file"
    paths: tuple[str, ...] = ()
    fmt: str | None = None
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    chunk_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("file", "generate", "kafka"):
            raise ValueError(f"source must be file, generate or kafka, got {self.kind!r}")
        if self.kind == "file" and not self.paths:
            raise ValueError("the file source needs input paths (--input / STREAMML_INPUT)")
        if self.fmt not in (None, "csv", "jsonl"):
            raise ValueError(f"format must be csv or jsonl, got {self.fmt!r}")
        if self.chunk_bytes is not None and self.chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be >= 1, got {self.chunk_bytes}")


@dataclass(frozen=True, slots=True)
class ErrorCountConfig:
    """Everything the error-count flow needs; built once from CLI flags or the environment."""

    source: SourceConfig
    state_dir: Path
    layout: StateLayout = field(default_factory=StateLayout)
    threshold: int = 2000
    alerts_out: Path | None = None
    dead_letters_out: Path | None = None
    late_out: Path | None = None
    history_dir: Path | None = None
    stats_path: Path | None = None
    pipeline_version: str = PIPELINE_VERSION
    kafka_env: tuple[tuple[str, str], ...] = ()
    recovery_dir: Path | None = None
    settle_ms: int = DEFAULT_SETTLE_MS
    state_memory_bytes: int = StoreTuning().memory_bytes

    @property
    def recovery(self) -> bool:
        """Whether the flow runs with Bytewax recovery."""
        return self.recovery_dir is not None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ErrorCountConfig:
        """Build the config from ``STREAMML_*`` variables (see the module docstring)."""
        env = os.environ if env is None else env

        e = Env(env)
        get, path = e.get, e.path

        state_dir = path("STATE_DIR")
        if state_dir is None:
            raise ValueError("STREAMML_STATE_DIR is required: the directory of the feature state")
        kind = get("SOURCE", "file")
        inputs = get("INPUT")
        generator = GeneratorConfig(
            events=int(get("EVENTS", "1000000")),
            accounts=int(get("ACCOUNTS", "100000")),
            seed=int(get("SEED", "7")),
        )
        chunk = get("CHUNK_BYTES")
        source = SourceConfig(
            kind=kind or "file",
            paths=tuple(inputs.split(os.pathsep)) if inputs else (),
            fmt=get("FORMAT"),
            generator=generator,
            chunk_bytes=int(chunk) if chunk else None,
        )
        layout = StateLayout(
            shards=int(get("SHARDS", "16")),
            bucket_ms=int(get("BUCKET_MS", "3600000")),
            window_buckets=int(get("WINDOW_BUCKETS", "24")),
        )
        history = get("HISTORY_DIR")
        return cls(
            source=source,
            state_dir=state_dir,
            layout=layout,
            threshold=int(get("THRESHOLD", "2000")),
            alerts_out=path("ALERTS_OUT"),
            dead_letters_out=path("DEAD_LETTERS_OUT"),
            late_out=path("LATE_OUT"),
            history_dir=None
            if history == "off"
            else Path(history)
            if history
            else state_dir / "history",
            stats_path=path("STATS_PATH"),
            pipeline_version=get("PIPELINE_VERSION", PIPELINE_VERSION) or PIPELINE_VERSION,
            kafka_env=e.kafka(),
            recovery_dir=path("RECOVERY_DIR"),
            settle_ms=int(get("SETTLE_MS", str(DEFAULT_SETTLE_MS))),
            state_memory_bytes=int(get("STATE_MEMORY_MB", "0")) << 20 or StoreTuning().memory_bytes,
        )

    def to_env(self) -> dict[str, str]:
        """Return the ``STREAMML_*`` variables that `from_env` turns back into this config."""
        g = self.source.generator
        env = {
            "SOURCE": self.source.kind,
            "INPUT": os.pathsep.join(self.source.paths),
            "FORMAT": self.source.fmt or "",
            "CHUNK_BYTES": str(self.source.chunk_bytes or ""),
            "EVENTS": str(g.events),
            "ACCOUNTS": str(g.accounts),
            "SEED": str(g.seed),
            "STATE_DIR": str(self.state_dir),
            "SHARDS": str(self.layout.shards),
            "BUCKET_MS": str(self.layout.bucket_ms),
            "WINDOW_BUCKETS": str(self.layout.window_buckets),
            "THRESHOLD": str(self.threshold),
            "ALERTS_OUT": str(self.alerts_out or ""),
            "DEAD_LETTERS_OUT": str(self.dead_letters_out or ""),
            "LATE_OUT": str(self.late_out or ""),
            "HISTORY_DIR": str(self.history_dir) if self.history_dir else "off",
            "STATS_PATH": str(self.stats_path or ""),
            "PIPELINE_VERSION": self.pipeline_version,
            "RECOVERY_DIR": str(self.recovery_dir or ""),
            "SETTLE_MS": str(self.settle_ms),
            "STATE_MEMORY_MB": str(self.state_memory_bytes >> 20),
        }
        return {**{f"STREAMML_{k}": v for k, v in env.items()}, **dict(self.kafka_env)}


def _decode_stats(d: Decoded) -> dict[str, int]:
    stats = {"read": d.read, "bytes": d.bytes_read, "valid": len(d.events), "dead": len(d.dead)}
    if d.held_back:
        stats["held_back"] = d.held_back
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


def _source(config: ErrorCountConfig):
    source = config.source
    where = {
        "state_dir": config.state_dir,
        "shards": config.layout.shards,
        "recovery_dir": config.recovery_dir,
    }
    if source.kind == "file":
        chunk = {} if source.chunk_bytes is None else {"chunk_bytes": source.chunk_bytes}
        return FileSource(
            list(source.paths), fmt=source.fmt, settle_ms=config.settle_ms, **chunk, **where
        )
    if source.kind == "generate":
        return GeneratorSource(source.generator)
    from streamml.operators.kafka import KafkaSource, KafkaSourceConfig

    return KafkaSource(KafkaSourceConfig.from_env(env=dict(config.kafka_env)), **where)


def prepare_state(config: ErrorCountConfig, *, reset_sources: tuple[str, ...] = ()) -> None:
    """Create or check the state dir and tie the recovery dir to it, before anything is read.

    Raises `RefusedError` (nothing written) when the state dir's settings differ, when shards
    are missing, and when the recovery dir belongs to another state dir or to one that is gone.
    `reset_sources` (input paths, or ``kafka:TOPIC``) start new incarnations of those inputs, so
    they are read again from their start as new inputs; only the CLI passes them, once, before
    the workers start.
    """
    fresh = StateLayout.read(config.state_dir) is None
    if config.recovery_dir is not None and fresh:
        bound = recovery_binding(config.recovery_dir)
        if bound is not None:
            raise RefusedError(
                f"recovery dir {config.recovery_dir} belongs to state dir {bound['state_dir']} "
                f"(id {bound['state_id']}), but {config.state_dir} holds no state: it was "
                "deleted or moved, so resuming would skip input that is no longer counted. "
                "Restore the state dir, or start over with `streamml recovery reset "
                f"{config.recovery_dir} --state-dir {config.state_dir}`"
            )
    config.layout.ensure(config.state_dir)
    registry = SourceRegistry(config.state_dir)
    for item in reset_sources:
        if item.startswith("kafka:"):
            registry.resolve_stream(item, reset=True)
        else:
            registry.resolve_file(item, reset=True)
    if config.recovery_dir is not None:
        positions = stored_positions(config.state_dir, config.layout.shards)
        fresh = not any(p >= 0 for p in positions.values())
        bind_recovery_dir(config.recovery_dir, config.state_dir, fresh_state=fresh)
        for field, step in _FILE_OUTPUTS.items():
            path = getattr(config, field)
            if path is not None:
                check_output_file(config.recovery_dir, f"error_count.{step}", path)


_FILE_OUTPUTS = {
    "alerts_out": "alerts-out",
    "dead_letters_out": "dead-letters-out",
    "late_out": "late-out",
}
"""The JSON lines outputs: config field -> step id of the sink (its snapshots are keyed by it)."""


def _json_lines_out(config: ErrorCountConfig, field: str, stream) -> None:
    """Write `stream` to the JSON lines file of `field`, one worker writing it."""
    step = _FILE_OUTPUTS[field]
    sink = JsonLinesSink(getattr(config, field), recovery_dir=config.recovery_dir)
    op.output(step, _one_key(f"{step}-key", stream), sink)


def _one_key(step_id: str, stream):
    """Key every item alike: single-partition sinks then get every item on one worker."""
    return op.key_on(step_id, stream, lambda _item: "all")


def build_flow(config: ErrorCountConfig) -> Dataflow:
    """Build the error-count dataflow for `config` (see `prepare_state` for what it checks)."""
    prepare_state(config)
    flow = Dataflow("error_count")
    raw = op.input("source", flow, _source(config))
    decoded = decode_events("decode", raw)
    keyed = shard_events("shard", decoded.events, config.layout.shards)
    by_shard = rolling_count(
        "rolling",
        keyed,
        RollingConfig(
            config.state_dir,
            config.layout,
            config.threshold,
            tuning=StoreTuning(memory_bytes=config.state_memory_bytes),
            recovery_dir=config.recovery_dir,
            source_step="error_count.source",
            replay_accepted=config.history_dir is not None,
            replay_late=config.late_out is not None,
        ),
    )
    updates = op.key_rm("unkey", by_shard)
    alerts = op.flat_map("alerts", updates, lambda u: u.alerts)
    if config.alerts_out is not None:
        _json_lines_out(config, "alerts_out", alerts)
    alerts_kafka = kafka_sink(config.kafka_env, "ALERTS_TOPIC")
    if alerts_kafka is not None:
        from streamml.operators.kafka import KafkaAlertSink

        op.output("alerts-kafka", alerts, KafkaAlertSink(alerts_kafka))
    dead_kafka = kafka_sink(config.kafka_env, "DEAD_LETTERS_TOPIC")
    if dead_kafka is not None:
        from streamml.operators.kafka import KafkaDeadLetterSink

        op.output("dead-letters-kafka", decoded.dead, KafkaDeadLetterSink(dead_kafka))
    if config.dead_letters_out is not None:
        _json_lines_out(config, "dead_letters_out", decoded.dead)
    if config.late_out is not None:
        _json_lines_out(config, "late_out", op.flat_map("late", updates, _late_records))
    if config.history_dir is not None:
        op.output(
            "history",
            by_shard,
            HistorySink(
                config.history_dir,
                config.layout.feature,
                config.pipeline_version,
                shards=config.layout.shards,
                recovery_dir=config.recovery_dir,
            ),
        )
    stats = op.merge(
        "stats",
        op.map("decode-stats", decoded.decoded, _decode_stats),
        op.map("update-stats", updates, _update_stats),
    )
    op.output("stats-out", _one_key("stats-key", stats), StatsSink(config.stats_path))
    return flow


def __getattr__(name: str) -> Dataflow:
    if name == "flow":
        return build_flow(ErrorCountConfig.from_env())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
