"""Keyed state on RocksDB: rolling state, online and on-demand stores, history, predictions."""

from streamml.state.definitions import (
    DefinitionError,
    Definitions,
    FeatureDef,
    SourceDef,
    default_definitions,
    load_definitions,
)
from streamml.state.history import HISTORY_SCHEMA, HistoryWriter, read_history
from streamml.state.layout import IncompatibleStateError, StateLayout
from streamml.state.ondemand import OnDemandReader, OnDemandStore, is_fresh
from streamml.state.online import FeatureRead, FeatureValue, OnlineStore, freshness, window_value
from streamml.state.predictions import (
    PREDICTION_SCHEMA,
    TIMEOUT_SCHEMA,
    FeatureRecord,
    Latency,
    PredictionRecord,
    PredictionWriter,
    TimeoutRecord,
    TimeoutWriter,
    read_predictions,
    read_timeouts,
)
from streamml.state.rolling_store import RollingStateStore, StoreTuning, empty_records, record_dtype
from streamml.state.sharding import hash_account, hash_many, shard_many, shard_of

__all__ = [
    "HISTORY_SCHEMA",
    "PREDICTION_SCHEMA",
    "TIMEOUT_SCHEMA",
    "DefinitionError",
    "Definitions",
    "FeatureDef",
    "FeatureRead",
    "FeatureRecord",
    "FeatureValue",
    "HistoryWriter",
    "IncompatibleStateError",
    "Latency",
    "OnDemandReader",
    "OnDemandStore",
    "OnlineStore",
    "PredictionRecord",
    "PredictionWriter",
    "RollingStateStore",
    "SourceDef",
    "StateLayout",
    "StoreTuning",
    "TimeoutRecord",
    "TimeoutWriter",
    "default_definitions",
    "empty_records",
    "freshness",
    "hash_account",
    "hash_many",
    "is_fresh",
    "load_definitions",
    "read_history",
    "read_predictions",
    "read_timeouts",
    "record_dtype",
    "shard_many",
    "shard_of",
    "window_value",
]
