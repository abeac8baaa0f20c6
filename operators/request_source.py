"""A seeded, bounded source of slow speed-test prediction requests.

Each partition emits `PredictionRequest`s drawn by `streamml.onnx_models.speedtests`, each
decoded by `parse_request` from its JSON form, exactly as a file or topic holding the same lines
would give it. The resume state is the index of the next request, so Bytewax recovery replays
from there. The hidden truth of the same requests (label and full feature row) is
`RequestGeneratorSource.truth()`, never part of the requests.
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from streamml.onnx_models.speedtests import (
    RequestGeneratorConfig,
    RequestTruth,
    generate_requests,
    iter_truth,
    partition_sizes,
)
from streamml.operators.records import PredictionRequest
from streamml.operators.requests import parse_request

__all__ = ["RequestGeneratorSource", "generated_requests"]


def generated_requests(
    config: RequestGeneratorConfig, partition: int, name: str, start: int, count: int
) -> list[PredictionRequest]:
    """Return requests `start..start+count` of `partition` as read from partition `name`."""
    out = []
    for i, request in enumerate(generate_requests(config, partition, start, count).requests):
        parsed = parse_request(orjson.dumps(request), name, start + i)
        if not isinstance(parsed, PredictionRequest):
            raise AssertionError(f"the generator drew an invalid request: {parsed}")
        out.append(parsed)
    return out


class _RequestPartition(StatefulSourcePartition[PredictionRequest, int]):
    def __init__(
        self, name: str, config: RequestGeneratorConfig, index: int, resume: int | None
    ) -> None:
        self.name = name
        self.config = config
        self.index = index
        self.pos = resume or 0
        self.size = partition_sizes(config)[index]

    def next_batch(self) -> list[PredictionRequest]:
        if self.pos >= self.size:
            raise StopIteration
        batch = generated_requests(
            self.config, self.index, self.name, self.pos, self.config.batch_size
        )
        self.pos += len(batch)
        return batch

    def snapshot(self) -> int:
        return self.pos


class RequestGeneratorSource(FixedPartitionedSource[PredictionRequest, int]):
    """Seeded slow speed-test requests for the triage model, `config.partitions` partitions."""

    def __init__(self, config: RequestGeneratorConfig) -> None:
        self.config = config

    def list_parts(self) -> list[str]:
        """Return the partition names, fixed by the seed and partition count."""
        return [f"req:{self.config.seed}:{i}" for i in range(self.config.partitions)]

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> _RequestPartition:
        """Build one partition, at `resume_state` (the next request's index) if resuming."""
        return _RequestPartition(
            for_part, self.config, int(for_part.rsplit(":", 1)[1]), resume_state
        )

    def truth(self) -> Iterator[RequestTruth]:
        """Yield the hidden truth of every request this source emits, by partition."""
        return iter_truth(self.config)
