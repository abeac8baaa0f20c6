r"""The outcome join flow: predictions and outcomes in; matched rows, reports, dead letters out.

Run it with ``streamml run outcomes ...`` or directly with Bytewax::

    STREAMML_PREDICTION_STORE=state/predictions STREAMML_OUTCOMES_SOURCE=file \
        STREAMML_INPUT=outcomes.jsonl python -m bytewax.run streamml.dataflows.outcomes:flow

It reads every scored variant of the prediction store (file by file, following new files with
``STREAMML_FOLLOW``) and the outcomes, joins them by request (see
`streamml.operators.outcomes`), and writes the matched rows to the outcome store beside the
predictions (``STORE/outcomes/date=.../part-*.parquet``), the reports (predictions never
resolved, outcomes that matched nothing) and dead letters as JSON lines.

Environment variables (the CLI sets the same ones for the processes it starts):

============================  =====================================================  ==========
variable                      meaning                                                default
============================  =====================================================  ==========
STREAMML_PREDICTION_STORE     prediction store root (read; outcome store written)    (required)
STREAMML_OUTCOMES_SOURCE      ``file``, ``generate`` or ``kafka``                    ``file``
STREAMML_INPUT                outcome files (JSON lines), separated by ``:``         (required
                                                                                     for file)
STREAMML_REQUESTS             generated requests whose outcomes are generated        10000
STREAMML_ACCOUNTS             their distinct accounts                                100000
STREAMML_SEED                 the requests' seed                                     7
STREAMML_NOW_MS               time of the last generated request (epoch ms)          (required
                                                                                     for
                                                                                     generate)
STREAMML_DRIFT_AT_MS          the world's change, as given to the predict flow       never
STREAMML_STREAM               the requests' stream, as given to the predict flow     0
STREAMML_SPAN_MS              the requests' span, as given to the predict flow       1 hour
STREAMML_OUTCOME_SEED         seed of the outcome delays                             1
STREAMML_MISSING_RATE         share of generated requests with no outcome            0.1
STREAMML_JOIN_DIR             the join's pending state (RocksDB, one per shard)      STORE/
                                                                                     join-state
STREAMML_SHARDS               shards of the join state (fixed at first run)          8
STREAMML_JOIN_BY              ``request`` (request id) or ``account-ts``             request
STREAMML_OUTCOME_TTL_MS       how long a prediction waits for its outcome            30 days
STREAMML_LATENESS_MS          how far out of time order each stream may arrive      1 hour
STREAMML_FOLLOW               ``1``: keep reading new prediction store files         off
STREAMML_DRAIN                ``1``: at the end, report whatever still waits         off
STREAMML_REPORTS_OUT          JSON lines of unresolved predictions and orphans       STORE/
                                                                                     outcome-
                                                                                     reports.jsonl
STREAMML_DEAD_LETTERS_OUT     JSON lines file of dead letters                        none
STREAMML_STATS_PATH           JSON file of run counters, rewritten while running     none
STREAMML_PIPELINE_VERSION     version written with every matched row                 outcomes/1
STREAMML_RECOVERY_DIR         the Bytewax recovery dir (``-r``): always used         JOIN_DIR/
                                                                                     recovery
STREAMML_KAFKA_*              Kafka outcome source (``BROKERS``, ``TOPIC``,
                              ``START``, ``STOP_AT_END``, security settings; see
                              `streamml.operators.kafka`)
============================  =====================================================  ==========
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from streamml.dataflows.environment import Env
from streamml.onnx_models.data import CLASSES
from streamml.onnx_models.speedtests import (
    OutcomeConfig,
    RequestGeneratorConfig,
    generate_outcomes,
)
from streamml.operators.outcomes import (
    JOIN_BY,
    JoinConfig,
    Outcome,
    PredictionStoreSource,
    ScoredVariant,
    decode_outcome_batch,
    outcome_join,
)
from streamml.operators.records import DeadLetter, RecordList
from streamml.operators.recovery_state import check_output_file
from streamml.operators.shard import shard_key
from streamml.operators.sinks import DayStoreSink, JsonLinesSink, StatsSink
from streamml.operators.sources import FileListSource
from streamml.state.errors import RefusedError
from streamml.state.files import atomic_write
from streamml.state.outcomes import OutcomeWriter
from streamml.state.sharding import shard_of

__all__ = ["OUTCOMES_PIPELINE_VERSION", "OutcomesFlowConfig", "build_flow", "prepare"]

OUTCOMES_PIPELINE_VERSION = "outcomes/1"
DAY_MS = 86_400_000
_JOIN_FILE = "streamml-join.json"


@dataclass(frozen=True, slots=True)
class OutcomesFlowConfig:
    """Everything the outcome join flow needs; built once from CLI flags or the environment."""

    prediction_store: Path
    source: str = "file"
    paths: tuple[str, ...] = ()
    requests: RequestGeneratorConfig = field(default_factory=RequestGeneratorConfig)
    outcomes: OutcomeConfig = field(default_factory=OutcomeConfig)
    join_dir: Path | None = None
    shards: int = 8
    join_by: str = "request"
    outcome_ttl_ms: int = 30 * DAY_MS
    lateness_ms: int = 3_600_000
    follow: bool = False
    drain: bool = False
    reports_out: Path | None = None
    dead_letters_out: Path | None = None
    stats_path: Path | None = None
    pipeline_version: str = OUTCOMES_PIPELINE_VERSION
    recovery_dir: Path | None = None
    kafka_env: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.source not in ("file", "generate", "kafka"):
            raise ValueError(
                f"outcomes source must be file, generate or kafka, got {self.source!r}"
            )
        if self.source == "file" and not self.paths:
            raise ValueError("the file outcomes source needs input paths (--input)")
        if self.join_by not in JOIN_BY:
            raise ValueError(f"join by must be one of {JOIN_BY}, got {self.join_by!r}")
        if not 1 <= self.shards <= 1024:
            raise ValueError(f"shards must be in [1, 1024], got {self.shards}")

    @property
    def join_state(self) -> Path:
        """The join's pending state."""
        return self.join_dir or self.prediction_store / "join-state"

    @property
    def recovery(self) -> Path:
        """The Bytewax recovery dir the flow always runs with.

        The join's pending state lives across runs, so what was read of the prediction store
        and of the outcome inputs must too: the flow always runs with recovery, and each run
        resumes where the last one ended.
        """
        return self.recovery_dir or self.join_state / "recovery"

    @property
    def reports(self) -> Path:
        """The JSON lines file of unresolved predictions and orphan outcomes."""
        return self.reports_out or self.prediction_store / "outcome-reports.jsonl"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OutcomesFlowConfig:
        """Build the config from ``STREAMML_*`` variables (see the module docstring)."""
        e = Env(os.environ if env is None else env)
        get, path = e.get, e.path
        store = path("PREDICTION_STORE")
        if store is None:
            raise ValueError("STREAMML_PREDICTION_STORE (the prediction store) is required")
        inputs = get("INPUT")
        return cls(
            prediction_store=store,
            source=get("OUTCOMES_SOURCE", "file") or "file",
            paths=tuple(inputs.split(os.pathsep)) if inputs else (),
            requests=RequestGeneratorConfig(
                requests=int(get("REQUESTS", "10000") or 0),
                accounts=int(get("ACCOUNTS", "100000") or 0),
                seed=int(get("SEED", "7") or 0),
                now_ms=int(get("NOW_MS", str(RequestGeneratorConfig().now_ms)) or 0),
                drift_at_ms=int(drift) if (drift := get("DRIFT_AT_MS")) else None,
                stream=int(get("STREAM", "0") or 0),
                span_ms=int(get("SPAN_MS", "3600000") or 0),
            ),
            outcomes=OutcomeConfig(
                seed=int(get("OUTCOME_SEED", "1") or 0),
                missing_rate=float(get("MISSING_RATE", "0.1") or 0),
            ),
            join_dir=path("JOIN_DIR"),
            shards=int(get("SHARDS", "8") or 0),
            join_by=get("JOIN_BY", "request") or "request",
            outcome_ttl_ms=int(get("OUTCOME_TTL_MS", str(30 * DAY_MS)) or 0),
            lateness_ms=int(get("LATENESS_MS", "3600000") or 0),
            follow=get("FOLLOW") == "1",
            drain=get("DRAIN") == "1",
            reports_out=path("REPORTS_OUT"),
            dead_letters_out=path("DEAD_LETTERS_OUT"),
            stats_path=path("STATS_PATH"),
            pipeline_version=get("PIPELINE_VERSION", OUTCOMES_PIPELINE_VERSION)
            or OUTCOMES_PIPELINE_VERSION,
            recovery_dir=path("RECOVERY_DIR"),
            kafka_env=e.kafka(),
        )

    def to_env(self) -> dict[str, str]:
        """Return the ``STREAMML_*`` variables that `from_env` turns back into this config."""
        r, o = self.requests, self.outcomes
        env = {
            "PREDICTION_STORE": str(self.prediction_store),
            "OUTCOMES_SOURCE": self.source,
            "INPUT": os.pathsep.join(self.paths),
            "REQUESTS": str(r.requests),
            "ACCOUNTS": str(r.accounts),
            "SEED": str(r.seed),
            "NOW_MS": str(r.now_ms),
            "DRIFT_AT_MS": "" if r.drift_at_ms is None else str(r.drift_at_ms),
            "STREAM": str(r.stream),
            "SPAN_MS": str(r.span_ms),
            "OUTCOME_SEED": str(o.seed),
            "MISSING_RATE": repr(o.missing_rate),
            "JOIN_DIR": str(self.join_dir or ""),
            "SHARDS": str(self.shards),
            "JOIN_BY": self.join_by,
            "OUTCOME_TTL_MS": str(self.outcome_ttl_ms),
            "LATENESS_MS": str(self.lateness_ms),
            "FOLLOW": "1" if self.follow else "",
            "DRAIN": "1" if self.drain else "",
            "REPORTS_OUT": str(self.reports_out or ""),
            "DEAD_LETTERS_OUT": str(self.dead_letters_out or ""),
            "STATS_PATH": str(self.stats_path or ""),
            "PIPELINE_VERSION": self.pipeline_version,
            "RECOVERY_DIR": str(self.recovery_dir or ""),
        }
        return {**{f"STREAMML_{k}": v for k, v in env.items()}, **dict(self.kafka_env)}


def prepare(config: OutcomesFlowConfig) -> None:
    """Check the join state's settings against the ones it was made with, and the outputs.

    The shard count and the join key fix where each pending entry lives; changing either
    would silently lose entries, so a join state refuses them.
    """
    join = config.join_state
    join.mkdir(parents=True, exist_ok=True)
    settings = {"shards": config.shards, "join_by": config.join_by, "source": config.source}
    marker = join / _JOIN_FILE
    if marker.exists():
        stored = orjson.loads(marker.read_bytes())
        for name, value in settings.items():
            if stored.get(name) != value:
                raise RefusedError(
                    f"join state {join} was made with {name} = {stored.get(name)!r}, not "
                    f"{value!r}; use those settings or a new join dir (--join-dir)"
                )
    else:
        atomic_write(marker, orjson.dumps(settings))
    for step, target in (("reports-out", config.reports), ("dead-out", config.dead_letters_out)):
        if target is not None:
            check_output_file(config.recovery, f"outcomes.{step}", target)


class _GeneratedPartition(StatefulSourcePartition[RecordList, dict]):
    def __init__(self, name: str, config: OutcomesFlowConfig, resume: dict | None) -> None:
        self.name = name
        r, o = config.requests, config.outcomes
        self.key = orjson.dumps([r.requests, r.accounts, r.seed, r.now_ms, r.drift_at_ms, o.seed])
        self.key = self.key.decode()
        # Outcomes of other generated requests than the last run's start from the beginning.
        self.pos = resume["pos"] if resume and resume.get("key") == self.key else 0
        self.values = [orjson.dumps(o) for o in generate_outcomes(config.requests, config.outcomes)]

    def next_batch(self) -> list[RecordList]:
        if self.pos >= len(self.values):
            raise StopIteration
        end = min(self.pos + 1024, len(self.values))
        batch = RecordList(self.name, self.values[self.pos : end], list(range(self.pos, end)))
        self.pos = end
        return [batch]

    def snapshot(self) -> dict:
        return {"key": self.key, "pos": self.pos}


class GeneratedOutcomeSource(FixedPartitionedSource[RecordList, dict]):
    """The outcomes of the generated requests (`generate_outcomes`), as JSON messages."""

    def __init__(self, config: OutcomesFlowConfig) -> None:
        self.config = config

    def list_parts(self) -> list[str]:
        """Return the one partition."""
        return ["outcomes-generated"]

    def build_part(self, step_id: str, for_part: str, resume_state: dict | None):
        """Build the partition, after the outcomes `resume_state` says were emitted."""
        return _GeneratedPartition(for_part, self.config, resume_state)


def _outcome_source(config: OutcomesFlowConfig):
    if config.source == "file":
        # 1 MiB chunks (about 10,000 outcomes): decoded outcomes are Python objects, and a
        # flow holds a few chunks at once.
        return FileListSource(list(config.paths), name="outcome-files", chunk_bytes=1 << 20)
    if config.source == "generate":
        return GeneratedOutcomeSource(config)
    from streamml.operators.kafka import KafkaSource, KafkaSourceConfig

    return KafkaSource(KafkaSourceConfig.from_env(env=dict(config.kafka_env)))


def build_flow(config: OutcomesFlowConfig) -> Dataflow:
    """Build the outcome join dataflow for `config`."""
    prepare(config)
    shards, join_by = config.shards, config.join_by

    def route_variants(variants: list[ScoredVariant]) -> list[tuple[str, tuple[str, Any]]]:
        groups: dict[str, list[ScoredVariant]] = {}
        for v in variants:
            groups.setdefault(shard_key(shard_of(v.key(join_by).encode(), shards)), []).append(v)
        return [(k, (k, vs)) for k, vs in groups.items()]

    def route_outcome(o: Outcome) -> tuple[str, tuple[str, Outcome]]:
        k = shard_key(shard_of(o.key.encode(), shards))
        return k, (k, o)

    flow = Dataflow("outcomes")
    stored = op.input(
        "predictions", flow, PredictionStoreSource(config.prediction_store, follow=config.follow)
    )
    raw = op.input("outcomes", flow, _outcome_source(config))
    decoded = op.flat_map("decode", raw, lambda item: decode_outcome_batch(item, CLASSES, join_by))
    valid = op.branch("valid", decoded, lambda x: isinstance(x, Outcome))
    keyed = op.merge(
        "to-shards",
        op.flat_map("variants-to-shards", stored, route_variants),
        op.map("outcomes-to-shards", valid.trues, route_outcome),
    )
    joined = outcome_join(
        "join",
        keyed,
        JoinConfig(
            state_dir=config.join_state,
            outcome_ttl_ms=config.outcome_ttl_ms,
            lateness_ms=config.lateness_ms,
            join_by=join_by,
            recovery=True,
            drain=config.drain,
        ),
    )
    op.output(
        "outcome-store",
        joined,
        DayStoreSink(
            config.prediction_store,
            config.pipeline_version,
            {"matched": OutcomeWriter},
            shards=shards,
            recovery_dir=config.recovery,
        ),
    )
    reports = op.flat_map("reports", joined, lambda kv: kv[1].reports)
    op.output(
        "reports-out",
        op.key_on("reports-key", reports, lambda _x: "all"),
        JsonLinesSink(config.reports, recovery_dir=config.recovery),
    )
    dead = op.merge("dead", valid.falses, op.flat_map("refused", joined, lambda kv: kv[1].dead))
    if config.dead_letters_out is not None:
        op.output(
            "dead-out",
            op.key_on("dead-key", dead, lambda _x: "all"),
            JsonLinesSink(config.dead_letters_out, recovery_dir=config.recovery),
        )
    stats = op.merge(
        "stats",
        op.map("join-stats", joined, lambda kv: kv[1].counts),
        op.map("dead-stats", valid.falses, DeadLetter.counts),
    )
    op.output(
        "stats-out", op.key_on("stats-key", stats, lambda _x: "all"), StatsSink(config.stats_path)
    )
    return flow


def __getattr__(name: str) -> Dataflow:
    if name == "flow":
        return build_flow(OutcomesFlowConfig.from_env())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
