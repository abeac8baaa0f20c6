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
STREAMML_SHARD_HASH           account -> shard hash (fixed when the state dir is     ``crc32``
                              created): ``crc32``, or ``murmur2`` (Kafka's default
                              key partitioner), which partition routing needs
STREAMML_ROUTING              ``exchange``: shard batches go to the process Bytewax  ``exchange``
                              hashes the shard to; ``partition``: each shard stays
                              in the process reading the input partition (file or
                              topic partition) its accounts come from, for input
                              partitioned by murmur2(account) (see
                              `streamml.operators.shard`)
STREAMML_STATE_MEMORY_MB      RocksDB memory of a process (block cache and           256
                              memtables of all its shards)
STREAMML_STATE_CODEC          how new shard databases store account records:         ``sparse``
                              ``sparse`` (non-zero words and their bitmap) or
                              ``raw``; a database keeps the codec it has
STREAMML_STATE_COMPRESSION    RocksDB block compression: ``lz4`` or ``none``         ``lz4``
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

from bytewax.dataflow import Dataflow
from streamml.dataflows.environment import KAFKA_PREFIX, Env
from streamml.dataflows.pipeline import (
    SourceInput,
    add_outputs,
    add_source,
    check_fresh_recovery,
    check_recovery,
    reset_inputs,
)
from streamml.operators.recovery_state import bind_routing
from streamml.operators.rolling import RollingConfig
from streamml.operators.routing import ROUTINGS, PartitionRouting
from streamml.operators.sources import DEFAULT_SETTLE_MS, GeneratorConfig
from streamml.state.definitions import count_feature
from streamml.state.feature_manifest import register_sources
from streamml.state.layout import StateLayout
from streamml.state.rolling_store import StoreTuning

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
    routing: str = "exchange"
    state_codec: str = StoreTuning().codec
    state_compression: str = StoreTuning().compression

    @property
    def tuning(self) -> StoreTuning:
        """The RocksDB settings of the flow's shard databases."""
        return StoreTuning(
            memory_bytes=self.state_memory_bytes,
            codec=self.state_codec,
            compression=self.state_compression,
        )

    def __post_init__(self) -> None:
        if self.routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {', '.join(ROUTINGS)}, got {self.routing!r}")
        _ = self.tuning  # checks the codec and compression names

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
            shard_hash=get("SHARD_HASH", "crc32") or "crc32",
        )
        return cls(
            source=source,
            state_dir=state_dir,
            layout=layout,
            threshold=int(get("THRESHOLD", "2000")),
            alerts_out=path("ALERTS_OUT"),
            dead_letters_out=path("DEAD_LETTERS_OUT"),
            late_out=path("LATE_OUT"),
            history_dir=e.history_dir(state_dir),
            stats_path=path("STATS_PATH"),
            pipeline_version=get("PIPELINE_VERSION", PIPELINE_VERSION) or PIPELINE_VERSION,
            kafka_env=e.kafka(),
            recovery_dir=path("RECOVERY_DIR"),
            settle_ms=int(get("SETTLE_MS", str(DEFAULT_SETTLE_MS))),
            state_memory_bytes=int(get("STATE_MEMORY_MB", "0")) << 20 or StoreTuning().memory_bytes,
            routing=get("ROUTING", "exchange") or "exchange",
            state_codec=get("STATE_CODEC", "sparse") or "sparse",
            state_compression=get("STATE_COMPRESSION", "lz4") or "lz4",
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
            "SHARD_HASH": self.layout.shard_hash,
            "ROUTING": self.routing,
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
            "STATE_CODEC": self.state_codec,
            "STATE_COMPRESSION": self.state_compression,
        }
        return {**{f"STREAMML_{k}": v for k, v in env.items()}, **dict(self.kafka_env)}


def prepare_state(config: ErrorCountConfig, *, reset_sources: tuple[str, ...] = ()) -> None:
    """Create or check the state dir and tie the recovery dir to it, before anything is read.

    Raises `RefusedError` (nothing written) when the state dir's settings differ, when shards
    are missing, and when the recovery dir belongs to another state dir or to one that is gone.
    `reset_sources` (input paths, or ``kafka:TOPIC``) start new incarnations of those inputs, so
    they are read again from their start as new inputs; only the CLI passes them, once, before
    the workers start.
    """
    check_fresh_recovery(config.recovery_dir, config.state_dir)
    layout = config.layout.ensure(config.state_dir)
    feature = count_feature(layout.feature, layout.bucket_ms, layout.window_buckets)
    register_sources(
        config.state_dir, {"signal_errors": (feature,)}, ids={"signal_errors": layout.feature_id}
    )
    reset_inputs(config.state_dir, reset_sources)
    check_recovery(
        config.recovery_dir, config.state_dir, config.layout.shards, "error_count", config
    )


def build_flow(config: ErrorCountConfig) -> Dataflow:
    """Build the error-count dataflow for `config` (see `prepare_state` for what it checks).

    With a recovery dir, also refuses a routing or (partition routing) worker count other than
    the one the recovery dir was first run with (`bind_routing`).
    """
    prepare_state(config)
    if config.recovery_dir is not None:
        workers = PartitionRouting.from_env().workers
        bind_routing(config.recovery_dir, config.routing, workers)
    flow = Dataflow("error_count")
    rolling = RollingConfig(
        config.state_dir,
        config.layout,
        config.threshold,
        tuning=config.tuning,
        recovery_dir=config.recovery_dir,
        source_step="error_count.source",
        replay_accepted=config.history_dir is not None,
        replay_late=config.late_out is not None,
    )
    source = config.source
    inp = SourceInput(
        name="signal_errors",
        kind=source.kind,
        paths=source.paths,
        fmt=source.fmt,
        topic=dict(config.kafka_env).get(KAFKA_PREFIX + "TOPIC") or None,
        generator=source.generator,
        chunk_bytes=source.chunk_bytes,
    )
    streams = add_source(
        flow,
        "",
        inp,
        rolling,
        schema=None,
        settle_ms=config.settle_ms,
        kafka_env=config.kafka_env,
        routing=config.routing,
    )
    add_outputs(config, [streams], config.pipeline_version)
    return flow


def __getattr__(name: str) -> Dataflow:
    if name == "flow":
        return build_flow(ErrorCountConfig.from_env())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
