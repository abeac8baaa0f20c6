r"""The prediction flow: requests in; predictions with their provenance, timeouts, dead letters out.

Run it with ``streamml run predict ...`` or directly with Bytewax::

    STREAMML_REQUESTS_SOURCE=generate STREAMML_STATE_DIR=state STREAMML_REGISTRY=models \
        STREAMML_TELEMETRY_URL=http://127.0.0.1:8081 \
        python -m bytewax.run streamml.dataflows.predict:flow

Environment variables (the CLI sets the same ones for the processes it starts):

============================  =====================================================  ==========
variable                      meaning                                                default
============================  =====================================================  ==========
STREAMML_REQUESTS_SOURCE      ``file``, ``generate`` or ``kafka``                    ``file``
STREAMML_INPUT                request files (JSON lines), separated by ``:``         (required
                                                                                     for file)
STREAMML_REQUESTS             generated requests                                     10000
STREAMML_ACCOUNTS             generated distinct accounts                            100000
STREAMML_SEED                 generator seed (the telemetry service's seed too)      7
STREAMML_NOW_MS               time of the last generated request (epoch ms)          wall clock
STREAMML_DRIFT_AT_MS          generated world changes then (a firmware rollout)      never
STREAMML_STREAM               another stream of generated requests (0, 1, ...)       0
STREAMML_SPAN_MS              the generated requests' times span this (ms)           1 hour
STREAMML_STATE_DIR            online store (read) and on-demand answers (written)    (required)
STREAMML_REGISTRY             model registry                                         (required)
STREAMML_TELEMETRY_URL        base URL of the ``telemetry`` on-demand service        none (never
                                                                                     fetched)
STREAMML_FETCH_TIMEOUT_MS     per-call timeout of on-demand fetches                  500
STREAMML_FETCH_ATTEMPTS       calls per fetch (retries with backoff and jitter)      3
STREAMML_FETCH_IN_FLIGHT      concurrent fetches per shard                           64
STREAMML_REQUEST_TTL_MS       a request's deadline after it arrives                  2000
STREAMML_DEDUPE_MS            how long an ended request id is remembered             600000
STREAMML_DEDUPE_IDS           ended request ids remembered per shard, at most        20000
STREAMML_PREDICTION_STORE     prediction store root (Parquet by day)                 STATE/
                                                                                     predictions
STREAMML_PREDICTIONS_OUT      JSON lines file of the answering predictions           none
STREAMML_TIMEOUTS_OUT         JSON lines file of timeout records                     none
STREAMML_DEAD_LETTERS_OUT     JSON lines file of dead letters                        none
STREAMML_STATS_PATH           JSON file of run counters, rewritten while running     none
STREAMML_PIPELINE_VERSION     version written with every prediction                  predict/1
STREAMML_RECOVERY_DIR         the Bytewax recovery dir (``-r``) when run with one    none
STREAMML_KAFKA_*              Kafka requests source and sinks (see
                              `streamml.operators.kafka`): ``BROKERS``, ``TOPIC``,
                              ``START``, ``STOP_AT_END``, ``PREDICTIONS_TOPIC``,
                              ``DEAD_LETTERS_TOPIC`` and the security settings
============================  =====================================================  ==========
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bytewax import operators as op
from bytewax.dataflow import Dataflow
from streamml.dataflows.environment import Env, kafka_sink
from streamml.onnx_models import ModelRegistry
from streamml.onnx_models.speedtests import RequestGeneratorConfig
from streamml.operators.fetch import FetchConfig
from streamml.operators.metadata import ModelMetadata, WithMetadata
from streamml.operators.predict import (
    PredictConfig,
    PredictOutput,
    metadata_to_shards,
    predict,
    tune_gc,
)
from streamml.operators.records import DeadLetter, PredictionRequest
from streamml.operators.recovery_state import check_output_file
from streamml.operators.request_source import RequestGeneratorSource
from streamml.operators.requests import decode_request_batch
from streamml.operators.shard import shard_key
from streamml.operators.sinks import JsonLinesSink, PredictionStoreSink, StatsSink
from streamml.operators.sources import FileSource
from streamml.state.layout import StateLayout

__all__ = ["PIPELINE_VERSION", "PredictFlowConfig", "RequestsConfig", "build_flow", "prepare"]

PIPELINE_VERSION = "predict/1"
TELEMETRY_SERVICE = "telemetry"


@dataclass(frozen=True, slots=True)
class RequestsConfig:
    """Where prediction requests come from."""

    kind: str = "file"
    paths: tuple[str, ...] = ()
    generator: RequestGeneratorConfig = field(default_factory=RequestGeneratorConfig)

    def __post_init__(self) -> None:
        if self.kind not in ("file", "generate", "kafka"):
            raise ValueError(f"requests source must be file, generate or kafka, got {self.kind!r}")
        if self.kind == "file" and not self.paths:
            raise ValueError("the file requests source needs input paths (--input)")


@dataclass(frozen=True, slots=True)
class PredictFlowConfig:
    """Everything the prediction flow needs; built once from CLI flags or the environment."""

    requests: RequestsConfig
    state_dir: Path
    registry_dir: Path
    telemetry_url: str | None = None
    fetch_timeout_ms: int = 500
    fetch_attempts: int = 3
    fetch_in_flight: int = 64
    request_ttl_ms: int = 2000
    dedupe_ms: int = 600_000
    dedupe_ids: int = 20_000
    prediction_store: Path | None = None
    predictions_out: Path | None = None
    timeouts_out: Path | None = None
    dead_letters_out: Path | None = None
    stats_path: Path | None = None
    pipeline_version: str = PIPELINE_VERSION
    recovery_dir: Path | None = None
    kafka_env: tuple[tuple[str, str], ...] = ()

    @property
    def store(self) -> Path:
        """The prediction store root."""
        return self.prediction_store or self.state_dir / "predictions"

    def services(self) -> tuple[tuple[str, FetchConfig], ...]:
        """Return the on-demand services the flow fetches from."""
        if not self.telemetry_url:
            return ()
        fetch = FetchConfig(
            self.telemetry_url,
            max_in_flight=self.fetch_in_flight,
            timeout_ms=self.fetch_timeout_ms,
            max_attempts=self.fetch_attempts,
        )
        return ((TELEMETRY_SERVICE, fetch),)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PredictFlowConfig:
        """Build the config from ``STREAMML_*`` variables (see the module docstring)."""
        env = os.environ if env is None else env

        e = Env(env)
        get, path = e.get, e.path

        state_dir, registry = path("STATE_DIR"), path("REGISTRY")
        if state_dir is None or registry is None:
            raise ValueError(
                "STREAMML_STATE_DIR (the feature state) and STREAMML_REGISTRY (the model "
                "registry) are required"
            )
        inputs = get("INPUT")
        generator = RequestGeneratorConfig(
            requests=int(get("REQUESTS", "10000") or 0),
            accounts=int(get("ACCOUNTS", "100000") or 0),
            seed=int(get("SEED", "7") or 0),
            now_ms=int(get("NOW_MS", str(time.time_ns() // 1_000_000)) or 0),
            drift_at_ms=int(drift) if (drift := get("DRIFT_AT_MS")) else None,
            stream=int(get("STREAM", "0") or 0),
            span_ms=int(get("SPAN_MS", "3600000") or 0),
        )
        return cls(
            requests=RequestsConfig(
                kind=get("REQUESTS_SOURCE", "file") or "file",
                paths=tuple(inputs.split(os.pathsep)) if inputs else (),
                generator=generator,
            ),
            state_dir=state_dir,
            registry_dir=registry,
            telemetry_url=get("TELEMETRY_URL"),
            fetch_timeout_ms=int(get("FETCH_TIMEOUT_MS", "500") or 0),
            fetch_attempts=int(get("FETCH_ATTEMPTS", "3") or 0),
            fetch_in_flight=int(get("FETCH_IN_FLIGHT", "64") or 0),
            request_ttl_ms=int(get("REQUEST_TTL_MS", "2000") or 0),
            dedupe_ms=int(get("DEDUPE_MS", "600000") or 0),
            dedupe_ids=int(get("DEDUPE_IDS", "20000") or 0),
            prediction_store=path("PREDICTION_STORE"),
            predictions_out=path("PREDICTIONS_OUT"),
            timeouts_out=path("TIMEOUTS_OUT"),
            dead_letters_out=path("DEAD_LETTERS_OUT"),
            stats_path=path("STATS_PATH"),
            pipeline_version=get("PIPELINE_VERSION", PIPELINE_VERSION) or PIPELINE_VERSION,
            recovery_dir=path("RECOVERY_DIR"),
            kafka_env=e.kafka(),
        )

    def to_env(self) -> dict[str, str]:
        """Return the ``STREAMML_*`` variables that `from_env` turns back into this config."""
        g = self.requests.generator
        env = {
            "REQUESTS_SOURCE": self.requests.kind,
            "INPUT": os.pathsep.join(self.requests.paths),
            "REQUESTS": str(g.requests),
            "ACCOUNTS": str(g.accounts),
            "SEED": str(g.seed),
            "NOW_MS": str(g.now_ms),
            "DRIFT_AT_MS": "" if g.drift_at_ms is None else str(g.drift_at_ms),
            "STREAM": str(g.stream),
            "SPAN_MS": str(g.span_ms),
            "STATE_DIR": str(self.state_dir),
            "REGISTRY": str(self.registry_dir),
            "TELEMETRY_URL": self.telemetry_url or "",
            "FETCH_TIMEOUT_MS": str(self.fetch_timeout_ms),
            "FETCH_ATTEMPTS": str(self.fetch_attempts),
            "FETCH_IN_FLIGHT": str(self.fetch_in_flight),
            "REQUEST_TTL_MS": str(self.request_ttl_ms),
            "DEDUPE_MS": str(self.dedupe_ms),
            "DEDUPE_IDS": str(self.dedupe_ids),
            "PREDICTION_STORE": str(self.prediction_store or ""),
            "PREDICTIONS_OUT": str(self.predictions_out or ""),
            "TIMEOUTS_OUT": str(self.timeouts_out or ""),
            "DEAD_LETTERS_OUT": str(self.dead_letters_out or ""),
            "STATS_PATH": str(self.stats_path or ""),
            "PIPELINE_VERSION": self.pipeline_version,
            "RECOVERY_DIR": str(self.recovery_dir or ""),
        }
        return {**{f"STREAMML_{k}": v for k, v in env.items()}, **dict(self.kafka_env)}


_FILE_OUTPUTS = {
    "predictions_out": "predictions-out",
    "timeouts_out": "timeouts-out",
    "dead_letters_out": "dead-letters-out",
}
"""The JSON lines outputs: config field -> step id of the sink."""


def prepare(config: PredictFlowConfig) -> StateLayout:
    """Check the registry and outputs and create the state dir if needed; return its layout.

    The state dir is the one the feature flows write (its layout fixes the shards); a new one
    gets the default layout, and online features then read as missing until a feature flow runs.
    """
    ModelRegistry(config.registry_dir).names()
    layout = StateLayout.read(config.state_dir) or StateLayout().ensure(config.state_dir)
    layout.check_complete(config.state_dir)
    if config.recovery_dir is not None:
        for name, step in _FILE_OUTPUTS.items():
            path = getattr(config, name)
            if path is not None:
                check_output_file(config.recovery_dir, f"predict.{step}", path)
    return layout


def _requests_source(config: PredictFlowConfig):
    req = config.requests
    if req.kind == "file":
        return FileSource(list(req.paths), fmt="jsonl", settle_ms=0)
    if req.kind == "generate":
        return RequestGeneratorSource(req.generator)
    from streamml.operators.kafka import KafkaSource, KafkaSourceConfig

    return KafkaSource(KafkaSourceConfig.from_env(env=dict(config.kafka_env)))


def _decode(item):
    if isinstance(item, ModelMetadata | PredictionRequest):
        return [item]
    return decode_request_batch(item)


def _output_stats(item: tuple[str, PredictOutput]) -> dict[str, int]:
    return item[1].counts


def build_flow(config: PredictFlowConfig) -> Dataflow:
    """Build the prediction dataflow for `config`."""
    layout = prepare(config)
    shards = layout.shards
    flow = Dataflow("predict")
    raw = op.input("requests", flow, WithMetadata(_requests_source(config), config.registry_dir))
    parsed = op.flat_map("decode", raw, _decode)
    is_meta = op.branch("metadata", parsed, lambda x: isinstance(x, ModelMetadata))
    valid = op.branch("valid", is_meta.falses, lambda x: isinstance(x, PredictionRequest))
    requests = op.key_on(
        "shard", valid.trues, lambda r: shard_key(layout.shard_of(r.account.encode()))
    )
    meta = metadata_to_shards("metadata-to-shards", is_meta.trues, shards)
    outputs = predict(
        "predict",
        op.merge("with-metadata", requests, meta),
        PredictConfig(
            state_dir=config.state_dir,
            registry_dir=config.registry_dir,
            layout=layout,
            services=config.services(),
            request_ttl_ms=config.request_ttl_ms,
            dedupe_ms=config.dedupe_ms,
            dedupe_ids=config.dedupe_ids,
        ),
    )
    op.output(
        "prediction-store",
        outputs,
        PredictionStoreSink(
            config.store,
            config.pipeline_version,
            shards=shards,
            recovery_dir=config.recovery_dir,
        ),
    )
    answers = op.flat_map("answers", outputs, lambda kv: kv[1].answers())
    timeouts = op.flat_map("timeouts", outputs, lambda kv: kv[1].timeouts)
    dead = op.merge("dead", valid.falses, op.flat_map("refused", outputs, lambda kv: kv[1].dead))
    files = {"predictions_out": answers, "timeouts_out": timeouts, "dead_letters_out": dead}
    for name, stream in files.items():
        path = getattr(config, name)
        if path is not None:
            step = _FILE_OUTPUTS[name]
            keyed = op.key_on(f"{step}-key", stream, lambda _x: "all")
            op.output(step, keyed, JsonLinesSink(path, recovery_dir=config.recovery_dir))
    predictions_kafka = kafka_sink(config.kafka_env, "PREDICTIONS_TOPIC")
    if predictions_kafka is not None:
        from streamml.operators.kafka import KafkaPredictionSink

        keyed_answers = op.key_on("predictions-kafka-key", answers, lambda _x: "all")
        op.output("predictions-kafka", keyed_answers, KafkaPredictionSink(predictions_kafka))
    dead_kafka = kafka_sink(config.kafka_env, "DEAD_LETTERS_TOPIC")
    if dead_kafka is not None:
        from streamml.operators.kafka import KafkaDeadLetterSink

        op.output("dead-letters-kafka", dead, KafkaDeadLetterSink(dead_kafka))
    stats = op.merge(
        "stats",
        op.map("output-stats", outputs, _output_stats),
        op.map("dead-stats", valid.falses, DeadLetter.counts),
    )
    op.output(
        "stats-out", op.key_on("stats-key", stats, lambda _x: "all"), StatsSink(config.stats_path)
    )
    return flow


def __getattr__(name: str) -> Dataflow:
    if name == "flow":
        flow = build_flow(PredictFlowConfig.from_env())
        tune_gc()
        return flow
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
