"""Reading a flow's ``STREAMML_*`` environment variables (shared by the flows' configs)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "KAFKA_CLIENTS",
    "KAFKA_PREFIX",
    "Env",
    "add_kafka_client_option",
    "kafka_env_with",
    "kafka_sink",
]

KAFKA_PREFIX = "STREAMML_KAFKA_"
KAFKA_CLIENTS = ("kafka-python", "confluent")
"""The values of ``STREAMML_KAFKA_CLIENT`` / ``--kafka-client`` (`streamml.operators.kafka_clients`
holds the same tuple; kept here so a command's parser needs no Kafka client import)."""


def add_kafka_client_option(group: Any) -> None:
    """Add ``--kafka-client`` to an argparse parser or group (unset: STREAMML_KAFKA_CLIENT)."""
    group.add_argument(
        "--kafka-client",
        choices=KAFKA_CLIENTS,
        default=None,
        help="Kafka client of the source and sinks: kafka-python (the default, or "
        "STREAMML_KAFKA_CLIENT) or confluent (librdkafka, faster; pip install "
        "'streamml[confluent]'); the same positions, snapshots, idempotent producer and dead "
        "letters with either",
    )


class Env:
    """``STREAMML_*`` variables of `env`: an empty value counts as unset."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def get(self, name: str, default: str | None = None) -> str | None:
        """Return ``STREAMML_{name}``, or `default` when unset or empty."""
        value = self.env.get(f"STREAMML_{name}")
        return value if value not in (None, "") else default

    def path(self, name: str) -> Path | None:
        """Return ``STREAMML_{name}`` as a path, or None."""
        value = self.get(name)
        return Path(value) if value else None

    def history_dir(self, state_dir: Path) -> Path | None:
        """Return ``STREAMML_HISTORY_DIR`` (default ``STATE_DIR/history``; ``off``: None)."""
        value = self.get("HISTORY_DIR")
        if value == "off":
            return None
        return Path(value) if value else state_dir / "history"

    def kafka(self) -> tuple[tuple[str, str], ...]:
        """Return the ``STREAMML_KAFKA_*`` variables, sorted."""
        return tuple(sorted((k, v) for k, v in self.env.items() if k.startswith(KAFKA_PREFIX)))


def kafka_env_with(
    settings: Mapping[str, object], env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Return the ``STREAMML_KAFKA_*`` variables of `env` (the process's) with `settings` on top.

    `settings` maps a variable name without the prefix to its value; an empty value (None,
    ``""``, False) leaves the variable as `env` has it.
    """
    env = os.environ if env is None else env
    out = {k: v for k, v in env.items() if k.startswith(KAFKA_PREFIX)}
    for name, value in settings.items():
        if value:
            out[KAFKA_PREFIX + name] = str(value)
    return out


def kafka_sink(kafka_env: tuple[tuple[str, str], ...], topic_var: str):
    """Return the Kafka sink config for `topic_var` if that topic is configured, else None."""
    env = dict(kafka_env)
    if not env.get(KAFKA_PREFIX + topic_var):
        return None
    from streamml.operators.kafka import KafkaSinkConfig

    return KafkaSinkConfig.from_env(topic_var=topic_var, env=env)
