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
from dataclasses import dataclass, replace
from pathlib import Path

from bytewax.dataflow import Dataflow
from streamml.dataflows.environment import Env
from streamml.dataflows.pipeline import (
    SourceInput,
    add_outputs,
    add_source,
    check_fresh_recovery,
    check_recovery,
    reset_inputs,
)
from streamml.operators.decode_source import SourceSchema
from streamml.operators.rolling import RollingConfig
from streamml.operators.sources import DEFAULT_SETTLE_MS, GeneratorConfig
from streamml.state.definitions import (
    Definitions,
    FeatureDef,
    SourceDef,
    default_definitions,
    load_definitions,
)
from streamml.state.feature_manifest import StoredSource, register_sources
from streamml.state.layout import StateLayout

__all__ = [
    "FeaturesConfig",
    "SourceInput",
    "build_flow",
    "is_classic",
    "prepare_features_state",
]

PIPELINE_VERSION = "features/1"


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
