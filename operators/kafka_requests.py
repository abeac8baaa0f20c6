"""Prediction requests produced to the requests topic by callers outside a flow (REST service).

`RequestProducer.send(request, done)` produces one request as the prediction flow's Kafka
source reads it (key = account, value = the request's JSON), through kafka-python's idempotent
producer with ``acks="all"`` (`KafkaSinkConfig.producer_kwargs`); `done(error)` is called once
the broker acknowledged it (`error` None) or refused it, on the producer's I/O thread.
It stays on kafka-python whatever `--kafka-client` says (the flows' source and sinks follow it).
With the Kafka connector (`streamml.operators.kafka`, `kafka_clients`, `kafka_confluent`), this is
the only module that imports a Kafka client.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
from kafka import KafkaProducer
from streamml.operators.kafka import KafkaSinkConfig
from streamml.operators.records import PredictionRequest

__all__ = ["RequestProducer"]


class RequestProducer:
    """Produce prediction requests to `config.topic` (idempotent, acks=all)."""

    def __init__(self, config: KafkaSinkConfig, *, max_block_ms: int = 2000) -> None:
        self.config = config
        self.topic = config.topic
        self._producer = KafkaProducer(**config.producer_kwargs(), max_block_ms=max_block_ms)

    def send(
        self, request: PredictionRequest, done: Callable[[BaseException | None], None]
    ) -> None:
        """Produce `request`; `done` gets None once acknowledged, or the error."""
        future = self._producer.send(
            self.topic,
            key=request.account.encode("utf-8"),
            value=orjson.dumps(request.to_json()),
        )
        future.add_callback(lambda _meta: done(None))
        future.add_errback(done)

    def reachable(self) -> bool:
        """Return whether the broker answers with the topic's partitions (blocks at most ~2 s)."""
        try:
            return bool(self._producer.partitions_for(self.topic))
        except Exception:
            return False

    def close(self, timeout_s: float = 5.0) -> None:
        """Flush what is in flight and close the producer."""
        self._producer.close(timeout=timeout_s)
