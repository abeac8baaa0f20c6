"""Reusable typed Bytewax operators, sources and sinks of the feature flows.

The Kafka connector (`streamml.operators.kafka`), the scoring operator
(`streamml.operators.scoring`), the asynchronous fetcher (`streamml.operators.fetch`), the
prediction operator (`streamml.operators.predict`), the model metadata stream
(`streamml.operators.metadata`), prediction explanations (`streamml.operators.explain`) and the
request generator (`streamml.operators.request_source`) are imported from their modules, so
flows that use none of them do not load kafka-python, the model registry, ONNX Runtime or
aiohttp.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "Alert",
    "DeadLetter",
    "DecodeOutputs",
    "Decoded",
    "EventBatch",
    "FileSource",
    "GeneratorConfig",
    "GeneratorSource",
    "HistorySink",
    "JsonLinesSink",
    "LinesChunk",
    "PredictionRequest",
    "RecordList",
    "RequestDecodeOutputs",
    "RollingConfig",
    "ShardUpdate",
    "StatsSink",
    "advance",
    "decode_chunk",
    "decode_events",
    "decode_records",
    "decode_requests",
    "generate_events",
    "parse_request",
    "read_stats",
    "rolling_count",
    "shard_events",
    "split_by_shard",
]

_HOMES: dict[str, tuple[str, ...]] = {
    "decode": ("Decoded", "DecodeOutputs", "decode_chunk", "decode_events", "decode_records"),
    "records": (
        "Alert",
        "DeadLetter",
        "EventBatch",
        "LinesChunk",
        "PredictionRequest",
        "RecordList",
    ),
    "requests": ("RequestDecodeOutputs", "decode_requests", "parse_request"),
    "rolling": ("RollingConfig", "ShardUpdate", "advance", "rolling_count"),
    "shard": ("shard_events", "split_by_shard"),
    "sinks": ("HistorySink", "JsonLinesSink", "StatsSink", "read_stats"),
    "sources": ("FileSource", "GeneratorConfig", "GeneratorSource", "generate_events"),
}
"""Where each public name lives: imported on first use, so importing one submodule of
this package does not load the others (and their dependencies)."""

_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    """Import a public name from its submodule on first use."""
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """List the public names, imported or not."""
    return sorted({*globals(), *__all__})
