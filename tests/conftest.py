"""Shared fixtures for the whole session: a real Kafka-protocol broker (tansu) with topic helpers,
and a real PostgreSQL server (pgserver's binaries) on a free loopback port."""

from __future__ import annotations

import importlib.util
import itertools
import os
from collections.abc import Callable, Iterator

import pytest
from streamml.state.postgres_server import PostgresServer, start_postgres

from streamml.broker import BrokerProcess, start_broker

__all__ = [
    "create_topic",
    "kafka_broker",
    "kafka_broker_process",
    "kafka_client",
    "make_topic",
    "postgres_dsn",
    "postgres_server",
]

_topic_seq = itertools.count()


@pytest.fixture(scope="session")
def kafka_broker_process() -> Iterator[BrokerProcess]:
    """The running tansu broker (in-memory, free loopback port), stopped after the session."""
    with start_broker() as broker:
        yield broker


@pytest.fixture(scope="session")
def kafka_broker(kafka_broker_process: BrokerProcess) -> str:
    """Bootstrap address `127.0.0.1:PORT` of the session's tansu broker."""
    return kafka_broker_process.bootstrap


@pytest.fixture(params=["kafka-python", "confluent"])
def kafka_client(request: pytest.FixtureRequest) -> str:
    """Each Kafka client the source and sinks run on (`KafkaSourceConfig.client`).

    The confluent one needs the `confluent` extra: skipped without it on a developer's machine,
    a failure under CI (which installs it).
    """
    if request.param == "confluent" and importlib.util.find_spec("confluent_kafka") is None:
        if os.environ.get("CI"):
            pytest.fail("confluent-kafka is not installed: make dev installs the confluent extra")
        pytest.skip("confluent-kafka is not installed (pip install -e '.[confluent]')")
    return request.param


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server on a free loopback port with a temporary data dir, stopped at the end.

    Not durable (fsync off): tests kill writers, never the machine. Run as `nobody` under root.
    """
    with start_postgres(durable=False) as server:
        yield server


@pytest.fixture(scope="session")
def postgres_dsn(postgres_server: PostgresServer) -> str:
    """Connection string of the session's PostgreSQL server."""
    return postgres_server.dsn


def create_topic(bootstrap: str, name: str, partitions: int = 1) -> str:
    """Create `name` with `partitions` partitions (kafka-python admin client); return the name."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        admin.close()
    return name


@pytest.fixture
def make_topic(kafka_broker: str, request: pytest.FixtureRequest) -> Callable[..., str]:
    """Return `make(partitions=1, prefix=None) -> topic`: a fresh, uniquely named topic."""

    def make(partitions: int = 1, prefix: str | None = None) -> str:
        base = prefix or request.node.name
        safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in base)[:180]
        return create_topic(kafka_broker, f"{safe}-{next(_topic_seq)}", partitions)

    return make
