"""Kafka source and sinks for Bytewax, on kafka-python or confluent-kafka (librdkafka).

Source: `KafkaSource` reads one topic, one Bytewax partition per topic partition (named
`kafka:{topic}:{partition}`), each with its own reader on an assigned partition (no
consumer group membership). The client that reads and writes records is the config's `client`
(``kafka-python``, the default, or ``confluent``): both sit behind the small interface of
`streamml.operators.kafka_clients`, and everything here (positions, batching, snapshots, group
commits, dead letters, errors) is the same for both. Topic administration (`ensure_topic`,
`topic_partitions`) uses kafka-python. The position lives in Bytewax snapshots: the snapshot of a
partition is the next offset to read; with `group_id` the snapshots' positions are also
committed to that group, for monitoring only. Each batch is one `RecordList` of raw values
(bytes, or `None` for null values) and their offsets.

Sinks: `KafkaAlertSink` writes `Alert`s (key = account, value = JSON with the deterministic `id`,
header `alert_id`) and `KafkaDeadLetterSink` writes `DeadLetter`s (value = the raw record, headers
`reason`, `detail`, `source`, `source_topic`, `source_partition`, `source_offset`). Both use an
idempotent producer with `acks="all"` and flush before `write_batch` returns, so everything the
flow emitted before a snapshot is acknowledged by the broker (at-least-once across restarts;
consumers deduplicate alerts by `alert_id`).

Environment variables read by `KafkaSourceConfig.from_env()` / `KafkaSinkConfig.from_env()`
(prefix `STREAMML_KAFKA_` by default):

- `BROKERS` comma-separated `host:port` list (required)
- `TOPIC` source topic; sinks read the variable named by `topic_var` (e.g. `ALERTS_TOPIC`)
- `CLIENT` (`kafka-python` | `confluent`), for the source and the sinks
- source: `START` (`stored` | `earliest` | `latest`), `STOP_AT_END` (`1`/`0`), `GROUP_ID`,
  `BATCH_SIZE`, `FETCH_MAX_BYTES`, `MAX_PARTITION_FETCH_BYTES`, `FETCH_MIN_BYTES`,
  `FETCH_MAX_WAIT_MS`, `IDLE_WAIT_MS`, `QUEUED_MAX_KBYTES` (confluent), `FAST_RECORDS`
  (`1`/`0`, kafka-python: parse fetched records with aiokafka's C parser, default `1`)
- sinks: `LINGER_MS`, `PRODUCER_BATCH_SIZE`, `COMPRESSION_TYPE`, `MAX_REQUEST_SIZE`
- security, passed through to kafka-python (translated for confluent-kafka):
  `SECURITY_PROTOCOL`, `SASL_MECHANISM`, `SASL_PLAIN_USERNAME`, `SASL_PLAIN_PASSWORD`,
  `SASL_KERBEROS_SERVICE_NAME`, `SASL_KERBEROS_DOMAIN_NAME`, `SSL_CAFILE`, `SSL_CERTFILE`,
  `SSL_KEYFILE`, `SSL_PASSWORD`, `SSL_CRLFILE`, `SSL_CIPHERS`, `SSL_CHECK_HOSTNAME`
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import (
    DynamicSink,
    FixedPartitionedSink,
    StatefulSinkPartition,
    StatelessSinkPartition,
)
from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError
from streamml.operators.kafka_clients import (
    KAFKA_CLIENTS,
    KafkaClient,
    PartitionReader,
    RecordProducer,
    check_client,
    open_producer,
    open_reader,
)
from streamml.operators.records import Alert, DeadLetter, RecordList
from streamml.operators.recovery_state import StoredStart
from streamml.state.errors import RefusedError
from streamml.state.predictions import PredictionRecord
from streamml.state.sources import SourceRegistry, incarnation_name

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "KAFKA_CLIENTS",
    "SECURITY_KEYS",
    "KafkaAlertSink",
    "KafkaDeadLetterSink",
    "KafkaPredictionSink",
    "KafkaSinkConfig",
    "KafkaSource",
    "KafkaSourceConfig",
    "ensure_topic",
    "kafka_partition_name",
    "parse_kafka_partition_name",
    "topic_partitions",
]

log = logging.getLogger(__name__)

MiB = 1024 * 1024

SECURITY_KEYS: frozenset[str] = frozenset(
    {
        "security_protocol",
        "sasl_mechanism",
        "sasl_plain_username",
        "sasl_plain_password",
        "sasl_kerberos_name",
        "sasl_kerberos_service_name",
        "sasl_kerberos_domain_name",
        "ssl_cafile",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_password",
        "ssl_crlfile",
        "ssl_ciphers",
        "ssl_check_hostname",
    }
)
"""kafka-python connection settings accepted in `security` (string values)."""

_BOOL_SECURITY_KEYS = frozenset({"ssl_check_hostname"})
_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_STARTS = ("stored", "earliest", "latest")
_PROBE_TIMEOUT_S = 10.0

StartFrom = Literal["stored", "earliest", "latest"]

DEFAULT_BATCH_SIZE: dict[str, int] = {"kafka-python": 10_000, "confluent": 100_000}
"""Records per `RecordList` by client when `KafkaSourceConfig.batch_size` is 0 (measured best:
kafka-python slows with larger polls; the confluent reader hands over a ready queue, and the
flow's state work per event falls as batches grow, see benchmarks/RESULTS.md)."""


def kafka_partition_name(topic: str, partition: int) -> str:
    """Return the source-partition name used in records and snapshots: `kafka:{topic}:{p}`."""
    return f"kafka:{topic}:{partition}"


def parse_kafka_partition_name(name: str) -> tuple[str, int] | None:
    """Return `(topic, partition)` from a `kafka:{topic}:{p}[#N]` name, or None for others."""
    if not name.startswith("kafka:"):
        return None
    name = name.partition("#")[0]
    topic, sep, part = name[len("kafka:") :].rpartition(":")
    if not sep or not topic or not part.isdigit():
        return None
    return topic, int(part)


def _brokers_tuple(value: object, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        items = [b.strip() for b in value.split(",")]
    elif isinstance(value, Sequence):
        items = [str(b).strip() for b in value]
    else:
        raise TypeError(
            f"{what}.brokers: expected a list of 'host:port' strings, got {type(value).__name__}"
        )
    items = [b for b in items if b]
    if not items:
        raise ValueError(
            f"{what}.brokers: expected at least one 'host:port', got {value!r}; pass the "
            "bootstrap servers, e.g. ['127.0.0.1:9092'] or set STREAMML_KAFKA_BROKERS"
        )
    return tuple(items)


def _check_topic(topic: object, what: str) -> None:
    if not isinstance(topic, str) or not _TOPIC_RE.match(topic):
        raise ValueError(
            f"{what}.topic: expected a Kafka topic name (1-249 of A-Z a-z 0-9 . _ -), got {topic!r}"
        )


def _check_security(security: object, what: str) -> dict[str, str]:
    if not isinstance(security, Mapping):
        raise TypeError(
            f"{what}.security: expected a dict of kafka-python settings, got "
            f"{type(security).__name__}"
        )
    unknown = sorted(set(security) - SECURITY_KEYS)
    if unknown:
        raise ValueError(
            f"{what}.security: unknown setting(s) {unknown}; expected some of "
            f"{sorted(SECURITY_KEYS)}"
        )
    return {str(k): str(v) for k, v in security.items()}


def _security_kwargs(security: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in security.items():
        if key in _BOOL_SECURITY_KEYS:
            out[key] = value.strip().lower() in ("1", "true", "yes", "on")
        else:
            out[key] = value
    return out


def _positive(name: str, value: int, what: str, *, allow_zero: bool = False) -> None:
    ok = (
        isinstance(value, int) and not isinstance(value, bool) and value >= (0 if allow_zero else 1)
    )
    if not ok:
        bound = ">= 0" if allow_zero else ">= 1"
        raise ValueError(f"{what}.{name}: expected an integer {bound}, got {value!r}")


def _env_int(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{key}: expected an integer, got {raw!r}") from None


def _env_bool(env: Mapping[str, str], key: str, default: bool) -> bool:
    raw = env.get(key)
    if raw is None or raw.strip() == "":
        return default
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{key}: expected 1/0/true/false, got {raw!r}")


def _env_security(env: Mapping[str, str], prefix: str) -> dict[str, str]:
    return {
        k: env[prefix + k.upper()] for k in sorted(SECURITY_KEYS) if env.get(prefix + k.upper())
    }


def _env_client(env: Mapping[str, str], prefix: str) -> KafkaClient:
    raw = env.get(prefix + "CLIENT", "").strip() or KAFKA_CLIENTS[0]
    if raw not in KAFKA_CLIENTS:
        raise ValueError(f"{prefix}CLIENT: expected one of {KAFKA_CLIENTS}, got {raw!r}")
    return raw  # type: ignore[return-value]


def _env_required(env: Mapping[str, str], key: str) -> str:
    raw = env.get(key, "").strip()
    if not raw:
        raise ValueError(f"{key}: expected a value, the variable is unset or empty; set it")
    return raw


@dataclass(frozen=True)
class KafkaSourceConfig:
    """Where and how `KafkaSource` reads.

    `start`: `"stored"` resumes from the Bytewax snapshot and starts at the earliest offset
    when there is none; `"earliest"` / `"latest"` ignore snapshots and start at the beginning /
    the end of each partition. `stop_at_end` reads up to the end offsets present when the
    partition starts, then finishes it (backfills, tests). `batch_size` caps records per
    `RecordList` (0: the client's default, `DEFAULT_BATCH_SIZE`: larger batches amortise the
    state's per-batch work, and only a backlog fills them, as a poll returns what is ready now).
    Fetch sizes are kafka-python's (large defaults for throughput).
    `security` is passed to kafka-python as-is (keys in `SECURITY_KEYS`).
    `group_id`, for monitoring only: at each snapshot, the position of the snapshot before it is
    committed to this consumer group (and the last position once a partition ends), so the usual
    Kafka tools show the flow's lag, at most one snapshot interval behind. Reading never uses the
    group: no group membership, and recovery resumes from snapshots, never from commits.
    `client` is the Kafka client that reads (`KAFKA_CLIENTS`: ``kafka-python`` or ``confluent``,
    the librdkafka one, from the ``streamml[confluent]`` extra); the settings above mean the same
    with either, and `queued_max_kbytes` is the confluent reader's prefetch queue per partition
    (librdkafka's `queued.max.messages.kbytes`). `fast_records` (kafka-python only) parses the
    fetched record batches with aiokafka's C parser instead of kafka-python's pure-Python one
    (`streamml.operators.kafka_records`: the same records and offsets, about 10x less CPU per
    record); turn it off if the installed kafka-python is not one it supports.
    `poll_timeout_ms` is how long one `next_batch` may wait for data (0 = never blocks);
    `idle_wait_ms` is the longest pause between polls while a partition is idle, and
    `fetch_max_wait_ms` how long the broker may hold a fetch while it has no data: both add to
    the latency of the first record after a pause (the defaults keep it to a few ms; an idle
    partition then costs a cheap poll every few ms).
    """

    brokers: Sequence[str]
    topic: str
    start: StartFrom = "stored"
    stop_at_end: bool = False
    batch_size: int = 0
    fetch_max_bytes: int = 64 * MiB
    max_partition_fetch_bytes: int = 16 * MiB
    fetch_min_bytes: int = 1
    fetch_max_wait_ms: int = 10
    poll_timeout_ms: int = 0
    idle_wait_ms: int = 5
    check_crcs: bool = True
    client_id: str = "streamml"
    security: dict[str, str] = field(default_factory=dict)
    group_id: str | None = None
    client: KafkaClient = "kafka-python"
    queued_max_kbytes: int = 64 * 1024
    fast_records: bool = True

    def __post_init__(self) -> None:
        """Validate and normalise the settings."""
        what = "KafkaSourceConfig"
        check_client(self.client, what)
        _positive("queued_max_kbytes", self.queued_max_kbytes, what)
        if self.batch_size == 0:
            object.__setattr__(self, "batch_size", DEFAULT_BATCH_SIZE[self.client])
        if self.group_id is not None and (
            not isinstance(self.group_id, str) or not self.group_id.strip()
        ):
            raise ValueError(
                f"{what}.group_id: expected a non-empty name or None, got {self.group_id!r}"
            )
        object.__setattr__(self, "brokers", _brokers_tuple(self.brokers, what))
        _check_topic(self.topic, what)
        if self.start not in _STARTS:
            raise ValueError(f"{what}.start: expected one of {_STARTS}, got {self.start!r}")
        for name in ("batch_size", "fetch_max_bytes", "max_partition_fetch_bytes"):
            _positive(name, getattr(self, name), what)
        for name in ("fetch_min_bytes", "fetch_max_wait_ms", "poll_timeout_ms", "idle_wait_ms"):
            _positive(name, getattr(self, name), what, allow_zero=True)
        object.__setattr__(self, "security", _check_security(self.security, what))

    @classmethod
    def from_env(
        cls,
        prefix: str = "STREAMML_KAFKA_",
        *,
        topic_var: str = "TOPIC",
        env: Mapping[str, str] | None = None,
    ) -> KafkaSourceConfig:
        """Build from environment variables `{prefix}BROKERS`, `{prefix}{topic_var}`, ...

        See the module docstring for every variable name.
        """
        env = os.environ if env is None else env
        d = cls.__dataclass_fields__
        return cls(
            brokers=_env_required(env, prefix + "BROKERS"),  # type: ignore[arg-type]
            topic=_env_required(env, prefix + topic_var),
            start=env.get(prefix + "START", "stored").strip() or "stored",  # type: ignore[arg-type]
            stop_at_end=_env_bool(env, prefix + "STOP_AT_END", False),
            batch_size=_env_int(env, prefix + "BATCH_SIZE", d["batch_size"].default),
            fetch_max_bytes=_env_int(env, prefix + "FETCH_MAX_BYTES", d["fetch_max_bytes"].default),
            max_partition_fetch_bytes=_env_int(
                env, prefix + "MAX_PARTITION_FETCH_BYTES", d["max_partition_fetch_bytes"].default
            ),
            fetch_min_bytes=_env_int(env, prefix + "FETCH_MIN_BYTES", d["fetch_min_bytes"].default),
            fetch_max_wait_ms=_env_int(
                env, prefix + "FETCH_MAX_WAIT_MS", d["fetch_max_wait_ms"].default
            ),
            idle_wait_ms=_env_int(env, prefix + "IDLE_WAIT_MS", d["idle_wait_ms"].default),
            security=_env_security(env, prefix),
            group_id=env.get(prefix + "GROUP_ID", "").strip() or None,
            client=_env_client(env, prefix),
            queued_max_kbytes=_env_int(
                env, prefix + "QUEUED_MAX_KBYTES", d["queued_max_kbytes"].default
            ),
            fast_records=_env_bool(env, prefix + "FAST_RECORDS", d["fast_records"].default),
        )

    def consumer_kwargs(self) -> dict[str, Any]:
        """Return the kafka-python `KafkaConsumer` settings for one assigned partition."""
        return {
            "bootstrap_servers": list(self.brokers),
            "client_id": self.client_id,
            "group_id": self.group_id,  # commits only: partitions are assigned, never subscribed
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "allow_auto_create_topics": False,
            "fetch_max_bytes": self.fetch_max_bytes,
            "max_partition_fetch_bytes": self.max_partition_fetch_bytes,
            "fetch_min_bytes": self.fetch_min_bytes,
            "fetch_max_wait_ms": self.fetch_max_wait_ms,
            "max_poll_records": self.batch_size,
            "check_crcs": self.check_crcs,
            "receive_buffer_bytes": 4 * MiB,
            "metrics_enabled": False,  # as the bare consumer of the benchmark: no per-fetch sensors
            **_security_kwargs(self.security),
        }


def topic_partitions(
    brokers: Sequence[str], topic: str, security: Mapping[str, str] | None = None
) -> list[int]:
    """Return the sorted partition ids of `topic`; raise `ValueError` when it does not exist."""
    consumer = KafkaConsumer(
        bootstrap_servers=list(brokers),
        group_id=None,
        enable_auto_commit=False,
        allow_auto_create_topics=False,
        **_security_kwargs(security or {}),
    )
    try:
        parts = consumer.partitions_for_topic(topic)
    finally:
        consumer.close()
    if not parts:
        raise ValueError(
            f"topic {topic!r} not found on {','.join(brokers)}: expected an existing topic; "
            "create it first (streamml.operators.kafka.ensure_topic or your Kafka admin tools)"
        )
    return sorted(parts)


class _KafkaSourcePartition(StatefulSourcePartition[RecordList, int]):
    """One topic partition read by its own assigned reader; the snapshot is the next offset."""

    def __init__(
        self,
        config: KafkaSourceConfig,
        partition: int,
        resume_state: int | None,
        name: str | None = None,
    ):
        self._config = config
        self._name = name or kafka_partition_name(config.topic, partition)
        self._topic = config.topic
        self._partition = partition
        self._reader: PartitionReader = open_reader(config, partition)
        self._batch_size = config.batch_size
        self._poll_timeout_ms = config.poll_timeout_ms
        self._idle_max = config.idle_wait_ms / 1000.0
        self._idle = 0.0
        self._awake: datetime | None = None
        self._group = config.group_id
        self._previous: int | None = None  # position of the last snapshot taken
        self._committed: int | None = None
        self._ended = False
        try:
            begin, listed_end = self._reader.watermarks()
            need_end = config.stop_at_end or (config.start == "latest")
            end = self._true_end(begin, listed_end) if need_end else None
            if config.start == "latest":
                assert end is not None
                start = end
            elif config.start == "stored" and resume_state is not None:
                start = int(resume_state)
                if start < begin or (
                    start > listed_end and start > self._true_end(begin, listed_end)
                ):
                    raise RefusedError(self._recreated(start, begin, listed_end))
            else:
                start = begin
            self._reader.seek(start)
        except BaseException:
            self._reader.close()
            raise
        self._next = start
        self._end = end if config.stop_at_end else None

    def _recreated(self, start: int, begin: int, end: int) -> str:
        where = "before the first record still kept" if start < begin else "past its end"
        return (
            f"{self._name}: reading is to continue at offset {start}, {where} (the partition "
            f"now holds offsets {begin}..{end - 1}): the topic was deleted and created again, "
            "or records were lost before they were read. Continue with --start earliest into "
            "a new --state-dir, or pass --reset-source kafka:"
            f"{self._topic} to read the topic as a new input into this state"
        )

    def _true_end(self, begin: int, listed_end: int) -> int:
        """Return the offset after the last record now in the partition.

        A broker's ListOffsets(latest) can under-report the end (tansu answers the base offset
        of the last record batch + 1), so read the last batch and take the fetch high
        watermark, which is exact.
        """
        if listed_end <= begin:
            return listed_end
        self._reader.seek(listed_end - 1)
        deadline = time.monotonic() + _PROBE_TIMEOUT_S
        hw: int | None = None
        while time.monotonic() < deadline:
            self._reader.poll(1, 200)
            hw = self._reader.high_watermark()
            if hw is not None:
                break
        if hw is None:
            log.warning(
                "%s: no fetch high watermark within %.0fs; using the listed end offset %d",
                self._name,
                _PROBE_TIMEOUT_S,
                listed_end,
            )
            return listed_end
        return max(hw, listed_end)

    def next_batch(self) -> list[RecordList]:
        """Return `[RecordList]` with the records ready now, or `[]`; StopIteration at the end."""
        end = self._end
        if end is not None and self._next >= end:
            self._ended = True
            raise StopIteration
        values, positions = self._reader.poll(self._batch_size, self._poll_timeout_ms)
        if not values:
            if end is not None:
                position = self._reader.position()
                if position is not None and position >= end:
                    self._next = max(self._next, min(position, end))
                    self._ended = True
                    raise StopIteration
            self._idle = min(self._idle_max, self._idle * 2 if self._idle else 0.001)
            self._awake = datetime.now(UTC) + timedelta(seconds=self._idle)
            return []
        self._idle = 0.0
        self._awake = None
        if end is not None and positions[-1] >= end:
            keep = sum(1 for p in positions if p < end)
            values, positions = values[:keep], positions[:keep]
            if not values:
                self._next = end
                self._ended = True
                raise StopIteration
        self._next = positions[-1] + 1
        return [RecordList(self._name, values, positions, self._topic, self._partition)]

    def next_awake(self) -> datetime | None:
        """Return when to poll again: at once while data flows, later while idle."""
        return self._awake

    def snapshot(self) -> int:
        """Return the offset of the next record to read; commit the one before it to the group."""
        if self._group is not None:
            if self._previous is not None:
                self._commit(self._previous, wait=False)
            self._previous = self._next
        return self._next

    def _commit(self, offset: int, *, wait: bool) -> None:
        """Commit `offset` to the consumer group (monitoring only: a failure is logged)."""
        if offset == self._committed:
            return
        try:
            self._reader.commit(offset, wait=wait)
        except Exception as exc:  # monitoring must never stop the flow
            log.warning(
                "%s: committing offset %d to group %r failed: %r",
                self._name,
                offset,
                self._group,
                exc,
            )
            return
        self._committed = offset

    def close(self) -> None:
        """Commit the last position when the partition ended (with `group_id`); close."""
        try:
            if self._group is not None:
                last = self._next if self._ended else self._previous
                if last is not None:
                    self._commit(last, wait=True)
        finally:
            self._reader.close()


class KafkaSource(FixedPartitionedSource[RecordList, int]):
    """Read a topic as `RecordList` batches; one Bytewax partition per topic partition.

    Offsets are kept in Bytewax snapshots (commits to `group_id` are for monitoring only); see
    `KafkaSourceConfig` for where each partition starts and when it stops. With a `state_dir`,
    `start="stored"` without a snapshot continues after the offsets the state dir has applied,
    and a partition whose offsets no longer fit them (the topic was created again) is refused;
    the topic's incarnation in the state dir (see `streamml.state.sources`) names the
    partitions (``kafka:{topic}:{p}``, then ``kafka:{topic}:{p}#N`` after a reset).
    """

    def __init__(
        self,
        config: KafkaSourceConfig,
        *,
        state_dir: str | os.PathLike[str] | None = None,
        shards: int = 0,
        recovery_dir: str | os.PathLike[str] | None = None,
    ):
        """Read with `config`; partitions are listed from the broker when the flow starts."""
        if not isinstance(config, KafkaSourceConfig):
            raise TypeError(
                f"KafkaSource: expected a KafkaSourceConfig, got {type(config).__name__}; "
                "build one with KafkaSourceConfig(brokers=[...], topic=...)"
            )
        self.config = config
        self.stored = StoredStart(
            Path(state_dir) if state_dir is not None else None,
            shards,
            Path(recovery_dir) if recovery_dir is not None else None,
        )
        self.incarnation = 1
        self._partition_count: int | None = None
        if state_dir is not None:
            self.incarnation = SourceRegistry(state_dir).resolve_stream(f"kafka:{config.topic}")

    def list_parts(self) -> list[str]:
        """Return `kafka:{topic}:{p}` for every partition of the topic."""
        cfg = self.config
        parts = topic_partitions(cfg.brokers, cfg.topic, cfg.security)
        self._partition_count = len(parts)
        return [
            incarnation_name(kafka_partition_name(cfg.topic, p), self.incarnation) for p in parts
        ]

    def partition_owner(self, name: str) -> tuple[int, int]:
        """Return (the topic partition's number, the topic's partition count)."""
        parsed = parse_kafka_partition_name(name)
        if parsed is None:
            raise ValueError(
                f"expected a partition named kafka:{self.config.topic}:N, got {name!r}"
            )
        if self._partition_count is None:
            cfg = self.config
            self._partition_count = len(topic_partitions(cfg.brokers, cfg.topic, cfg.security))
        return parsed[1], self._partition_count

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> StatefulSourcePartition[RecordList, int]:
        """Build the reader of one topic partition, resuming at `resume_state` if given."""
        parsed = parse_kafka_partition_name(for_part)
        if parsed is None or parsed[0] != self.config.topic:
            raise ValueError(
                f"{step_id}: expected a partition named kafka:{self.config.topic}:N, got "
                f"{for_part!r}; the recovery store may belong to another topic"
            )
        if resume_state is None and self.config.start == "stored":
            through = self.stored.through(for_part)
            resume_state = through + 1 if through >= 0 else None
        return _KafkaSourcePartition(self.config, parsed[1], resume_state, for_part)


@dataclass(frozen=True)
class KafkaSinkConfig:
    """Where and how a Kafka sink writes.

    The producer is idempotent with `acks="all"`; `linger_ms`, `batch_size` (bytes per producer
    batch), `compression_type` and `max_request_size` are kafka-python's; `flush_timeout_s`
    bounds how long `write_batch` waits for acknowledgements. `security` and `client` as in
    `KafkaSourceConfig` (with ``confluent``, the same settings under librdkafka's names).
    """

    brokers: Sequence[str]
    topic: str
    linger_ms: int = 5
    batch_size: int = 1 * MiB
    compression_type: str | None = None
    max_request_size: int = 16 * MiB
    flush_timeout_s: float = 60.0
    client_id: str = "streamml"
    security: dict[str, str] = field(default_factory=dict)
    client: KafkaClient = "kafka-python"

    def __post_init__(self) -> None:
        """Validate and normalise the settings."""
        what = "KafkaSinkConfig"
        check_client(self.client, what)
        object.__setattr__(self, "brokers", _brokers_tuple(self.brokers, what))
        _check_topic(self.topic, what)
        _positive("linger_ms", self.linger_ms, what, allow_zero=True)
        _positive("batch_size", self.batch_size, what)
        _positive("max_request_size", self.max_request_size, what)
        allowed = (None, "gzip", "snappy", "lz4", "zstd")
        if self.compression_type not in allowed:
            raise ValueError(
                f"{what}.compression_type: expected one of {allowed}, got {self.compression_type!r}"
            )
        if not self.flush_timeout_s > 0:
            raise ValueError(
                f"{what}.flush_timeout_s: expected seconds > 0, got {self.flush_timeout_s!r}"
            )
        object.__setattr__(self, "security", _check_security(self.security, what))

    @classmethod
    def from_env(
        cls,
        prefix: str = "STREAMML_KAFKA_",
        *,
        topic_var: str = "ALERTS_TOPIC",
        env: Mapping[str, str] | None = None,
    ) -> KafkaSinkConfig:
        """Build from `{prefix}BROKERS`, `{prefix}{topic_var}` and the optional producer settings.

        Use `topic_var="DEAD_LETTERS_TOPIC"` for the dead-letter sink.
        """
        env = os.environ if env is None else env
        d = cls.__dataclass_fields__
        compression = env.get(prefix + "COMPRESSION_TYPE", "").strip() or None
        return cls(
            brokers=_env_required(env, prefix + "BROKERS"),  # type: ignore[arg-type]
            topic=_env_required(env, prefix + topic_var),
            linger_ms=_env_int(env, prefix + "LINGER_MS", d["linger_ms"].default),
            batch_size=_env_int(env, prefix + "PRODUCER_BATCH_SIZE", d["batch_size"].default),
            compression_type=compression,
            max_request_size=_env_int(
                env, prefix + "MAX_REQUEST_SIZE", d["max_request_size"].default
            ),
            security=_env_security(env, prefix),
            client=_env_client(env, prefix),
        )

    def producer_kwargs(self) -> dict[str, Any]:
        """Return the kafka-python `KafkaProducer` settings (idempotent, acks=all)."""
        return {
            "bootstrap_servers": list(self.brokers),
            "client_id": self.client_id,
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": self.linger_ms,
            "batch_size": self.batch_size,
            "compression_type": self.compression_type,
            "max_request_size": self.max_request_size,
            **_security_kwargs(self.security),
        }


X = TypeVar("X")
_Encoded = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]


class _ProducerPartition(StatelessSinkPartition[X]):
    """Send a batch, flush, and fail loudly if any record was not acknowledged."""

    def __init__(self, config: KafkaSinkConfig, encode: Callable[[X], _Encoded]):
        self._topic = config.topic
        self._flush_timeout_s = config.flush_timeout_s
        self._encode = encode
        self._producer: RecordProducer = open_producer(config)

    def write_batch(self, items: list[X]) -> None:
        """Send every item and wait until the broker acknowledged all of them."""
        if not items:
            return
        send, topic, encode = self._producer.send, self._topic, self._encode
        for item in items:
            key, value, headers = encode(item)
            send(topic, key, value, headers)
        pending = self._producer.flush(self._flush_timeout_s)
        failed, first = self._producer.take_errors()
        if failed or pending or first is not None:
            raise RuntimeError(
                f"Kafka sink for topic {topic!r}: {failed + pending} of {len(items)} records "
                f"were not acknowledged ({pending} within {self._flush_timeout_s} s; first "
                f"error: {first!r}); expected the broker to accept every record; the flow "
                "stops so a restart replays from the last snapshot"
            )

    def close(self) -> None:
        """Flush and close the producer."""
        self._producer.close(self._flush_timeout_s)


def _encode_alert(alert: Alert) -> _Encoded:
    return (
        alert.account.encode("utf-8"),
        orjson.dumps(alert.to_json()),
        [("alert_id", alert.alert_id.encode("utf-8"))],
    )


def _encode_dead_letter(item: DeadLetter | tuple[DeadLetter, bytes | None]) -> _Encoded:
    if isinstance(item, tuple):
        letter, value = item
    else:
        letter, value = item, item.raw
    parsed = parse_kafka_partition_name(letter.partition)
    topic, partition = parsed if parsed is not None else ("", -1)
    headers = [
        ("reason", letter.reason.encode("utf-8")),
        ("detail", letter.detail.encode("utf-8")),
        ("source", letter.partition.encode("utf-8")),
        ("source_topic", topic.encode("utf-8")),
        ("source_partition", str(partition).encode("ascii")),
        ("source_offset", str(letter.position).encode("ascii")),
    ]
    return letter.partition.encode("utf-8"), value, headers


def _encode_prediction(record: PredictionRecord) -> _Encoded:
    return (
        record.account.encode("utf-8"),
        orjson.dumps(record.to_json()),
        [("request_id", record.request_id.encode("utf-8"))],
    )


class _SnapshotFlushPartition(StatefulSinkPartition[X, None]):
    """Send without waiting; wait for every acknowledgement at each snapshot and at close.

    Records leave within the producer's `linger_ms`; the dataflow thread never waits for the
    broker except at a snapshot, which is taken before Bytewax commits the epoch, so a record is
    acknowledged before any resume point past it exists (at least once, like `_ProducerPartition`).
    """

    def __init__(self, config: KafkaSinkConfig, encode: Callable[[X], _Encoded]):
        self._topic = config.topic
        self._flush_timeout_s = config.flush_timeout_s
        self._encode = encode
        self._producer: RecordProducer = open_producer(config)

    def write_batch(self, items: list[X]) -> None:
        """Hand every item to the producer; fail on a record the broker already refused."""
        send, topic, encode = self._producer.send, self._topic, self._encode
        for item in items:
            key, value, headers = encode(item)
            send(topic, key, value, headers)
        self._producer.poll()
        self._check(pending=0)

    def _check(self, *, pending: int) -> None:
        failed, first = self._producer.take_errors()
        if failed or first is not None:
            raise RuntimeError(
                f"Kafka sink for topic {self._topic!r}: {failed} records were not acknowledged "
                f"(first error: {first!r}); the flow stops so a restart replays from the last "
                "snapshot"
            )
        if pending:
            raise RuntimeError(
                f"Kafka sink for topic {self._topic!r}: {pending} records not acknowledged "
                f"within {self._flush_timeout_s} s"
            )

    def snapshot(self) -> None:
        """Wait until the broker acknowledged everything sent so far."""
        self._check(pending=self._producer.flush(self._flush_timeout_s))

    def close(self) -> None:
        """Flush, check and close the producer."""
        self.snapshot()
        self._producer.close(self._flush_timeout_s)


class KafkaPredictionSink(FixedPartitionedSink[PredictionRecord, None]):
    """Write answering predictions to a topic: key = account, value = JSON, header `request_id`.

    One partition (one producer, on the worker that owns it): items keyed alike reach it. The
    dataflow does not wait for the broker per batch; every record is acknowledged before the
    snapshot that follows it. After a restart the flow may send again what it sent since its
    last snapshot (the same request with the same answer); readers keep the first record of
    each `request_id`.
    """

    def __init__(self, config: KafkaSinkConfig):
        """Write with `config` (an idempotent producer)."""
        if not isinstance(config, KafkaSinkConfig):
            raise TypeError(
                f"KafkaPredictionSink: expected a KafkaSinkConfig, got {type(config).__name__}"
            )
        self.config = config

    def list_parts(self) -> list[str]:
        """Return the single partition."""
        return ["predictions"]

    def build_part(
        self, step_id: str, for_part: str, resume_state: None
    ) -> StatefulSinkPartition[PredictionRecord, None]:
        """Build the producer."""
        return _SnapshotFlushPartition(self.config, _encode_prediction)


class KafkaAlertSink(DynamicSink[Alert]):
    """Write `Alert`s to a topic: key = account (UTF-8), value = JSON, header `alert_id`.

    Alerts of one account land in one topic partition, in order. After a restart the flow may
    emit again what it emitted since its last snapshot; readers drop repeats by `alert_id`.
    """

    def __init__(self, config: KafkaSinkConfig):
        """Write with `config` (one idempotent producer per worker)."""
        if not isinstance(config, KafkaSinkConfig):
            raise TypeError(
                f"KafkaAlertSink: expected a KafkaSinkConfig, got {type(config).__name__}"
            )
        self.config = config

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition[Alert]:
        """Build this worker's producer."""
        return _ProducerPartition(self.config, _encode_alert)


class KafkaDeadLetterSink(DynamicSink[DeadLetter | tuple[DeadLetter, bytes | None]]):
    """Write dead letters to a topic: value = the raw record, where it came from in headers.

    Items are `DeadLetter`s (value = `raw`, possibly cut) or `(DeadLetter, full_value)` pairs
    carrying the record exactly as it came (`None` for a null value). Headers: `reason`,
    `detail`, `source` (source partition name), `source_topic`, `source_partition` and
    `source_offset` (decimal ASCII; topic empty and partition -1 for non-Kafka sources).
    Key = the source partition name, so letters of one source partition stay in order.
    """

    def __init__(self, config: KafkaSinkConfig):
        """Write with `config` (one idempotent producer per worker)."""
        if not isinstance(config, KafkaSinkConfig):
            raise TypeError(
                f"KafkaDeadLetterSink: expected a KafkaSinkConfig, got {type(config).__name__}"
            )
        self.config = config

    def build(
        self, step_id: str, worker_index: int, worker_count: int
    ) -> StatelessSinkPartition[DeadLetter | tuple[DeadLetter, bytes | None]]:
        """Build this worker's producer."""
        return _ProducerPartition(self.config, _encode_dead_letter)


def ensure_topic(
    brokers: Sequence[str] | str,
    topic: str,
    partitions: int,
    *,
    replication_factor: int = 1,
    configs: Mapping[str, str] | None = None,
    security: Mapping[str, str] | None = None,
    timeout_s: float = 30.0,
) -> int:
    """Create `topic` with `partitions` partitions unless it exists; return its partition count.

    An existing topic is left as it is (its partition count is returned, and a warning is
    logged when it differs from `partitions`).
    """
    servers = list(_brokers_tuple(brokers, "ensure_topic"))
    _check_topic(topic, "ensure_topic")
    _positive("partitions", partitions, "ensure_topic")
    sec = _security_kwargs(_check_security(security or {}, "ensure_topic"))
    admin = KafkaAdminClient(bootstrap_servers=servers, **sec)
    try:
        if topic not in set(admin.list_topics()):
            new = NewTopic(
                topic,
                num_partitions=partitions,
                replication_factor=replication_factor,
                topic_configs=dict(configs or {}),
            )
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([new], timeout_ms=int(timeout_s * 1000))
    finally:
        admin.close()
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            found = topic_partitions(servers, topic, security)
            break
        except ValueError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    if len(found) != partitions:
        log.warning(
            "topic %r exists with %d partitions, %d were asked for; left as it is",
            topic,
            len(found),
            partitions,
        )
    return len(found)
