"""Reusable typed Bytewax operators, sources and sinks of the feature flows.

The Kafka connector (`streamml.operators.kafka`), the scoring operator
(`streamml.operators.scoring`), the asynchronous fetcher (`streamml.operators.fetch`), the
prediction operator (`streamml.operators.predict`), the model metadata stream
(`streamml.operators.metadata`), prediction explanations (`streamml.operators.explain`) and the
request generator (`streamml.operators.request_source`) are imported from their modules, so
flows that use none of them do not load kafka-python, the model registry, ONNX Runtime or
aiohttp.
"""

from streamml.operators.decode import (
    Decoded,
    DecodeOutputs,
    decode_chunk,
    decode_events,
    decode_records,
)
from streamml.operators.records import (
    Alert,
    DeadLetter,
    EventBatch,
    LinesChunk,
    PredictionRequest,
    RecordList,
)
from streamml.operators.requests import RequestDecodeOutputs, decode_requests, parse_request
from streamml.operators.rolling import RollingConfig, ShardUpdate, advance, rolling_count
from streamml.operators.shard import shard_events, split_by_shard
from streamml.operators.sinks import HistorySink, JsonLinesSink, StatsSink, read_stats
from streamml.operators.sources import FileSource, GeneratorConfig, GeneratorSource, generate_events

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
