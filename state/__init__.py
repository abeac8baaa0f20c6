"""Keyed state on RocksDB: rolling state, online and on-demand stores, history, predictions."""

from __future__ import annotations

import importlib
from typing import Any

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

_HOMES: dict[str, tuple[str, ...]] = {
    "definitions": (
        "DefinitionError",
        "Definitions",
        "FeatureDef",
        "SourceDef",
        "default_definitions",
        "load_definitions",
    ),
    "history": ("HISTORY_SCHEMA", "HistoryWriter", "read_history"),
    "layout": ("IncompatibleStateError", "StateLayout"),
    "ondemand": ("OnDemandReader", "OnDemandStore", "is_fresh"),
    "online": ("FeatureRead", "FeatureValue", "OnlineStore", "freshness", "window_value"),
    "predictions": (
        "PREDICTION_SCHEMA",
        "TIMEOUT_SCHEMA",
        "FeatureRecord",
        "Latency",
        "PredictionRecord",
        "PredictionWriter",
        "TimeoutRecord",
        "TimeoutWriter",
        "read_predictions",
        "read_timeouts",
    ),
    "rolling_store": ("RollingStateStore", "StoreTuning", "empty_records", "record_dtype"),
    "sharding": ("hash_account", "hash_many", "shard_many", "shard_of"),
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
