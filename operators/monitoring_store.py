"""Monitoring over the stores: read predictions and outcomes, compute, write the metrics table.

The metrics table (`streamml.operators.monitoring.METRICS_SCHEMA`) is one Parquet file,
``OUT/metrics.parquet`` (by default ``PREDICTION_STORE/metrics/``), replaced atomically by each
run. A run recomputes every window from the stores (a full recompute: its cost per prediction
is measured by `streamml bench monitor`); only the columns the metrics need are read.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from streamml.onnx_models.errors import ModelNotFoundError, RegistryError
from streamml.onnx_models.registry import ModelRegistry
from streamml.operators.monitoring import METRICS_SCHEMA, compute_metrics
from streamml.state.outcomes import OUTCOME_SCHEMA, OUTCOMES_DIR
from streamml.state.predictions import PREDICTION_SCHEMA, PREDICTIONS_DIR

__all__ = [
    "METRICS_DIR",
    "METRICS_FILE",
    "MonitorRun",
    "compute_store_metrics",
    "latest_windows",
    "load_references",
    "metrics_path",
    "read_metrics",
    "read_monitoring_inputs",
]

METRICS_DIR = "metrics"
"""Default folder of the metrics table under a prediction store's root."""
METRICS_FILE = "metrics.parquet"
"""File name of the metrics table in its folder."""

_PREDICTION_COLUMNS = (
    "model",
    "version",
    "variant",
    "request_ts",
    "label",
    "probabilities",
    "classes",
    "features",
)
_OUTCOME_COLUMNS = (
    "model",
    "version",
    "variant",
    "request_ts",
    "label",
    "probabilities",
    "classes",
    "outcome",
)
_HIVE = ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive")


@dataclass(frozen=True)
class MonitorRun:
    """What one metrics computation read, wrote and how long it took."""

    path: Path
    predictions: int
    outcomes: int
    groups: int
    rows: int
    read_s: float
    compute_s: float
    write_s: float

    @property
    def seconds(self) -> float:
        """Total wall time."""
        return self.read_s + self.compute_s + self.write_s


def metrics_path(out: str | os.PathLike[str]) -> Path:
    """Return the metrics table's file in folder `out` (or `out` itself if it is a .parquet)."""
    p = Path(out)
    return p if p.suffix == ".parquet" else p / METRICS_FILE


def _read(folder: Path, schema: pa.Schema, columns: Iterable[str]) -> pa.Table:
    cols = list(columns)
    if not folder.is_dir():
        return pa.schema([schema.field(c) for c in cols]).empty_table()
    full = schema.append(pa.field("date", pa.string()))
    dataset = ds.dataset(folder, schema=full, format="parquet", partitioning=_HIVE)
    return dataset.to_table(columns=cols)


def read_monitoring_inputs(root: str | os.PathLike[str]) -> tuple[pa.Table, pa.Table]:
    """Return the prediction rows and outcome rows of the store at `root` (needed columns)."""
    base = Path(root)
    predictions = _read(base / PREDICTIONS_DIR, PREDICTION_SCHEMA, _PREDICTION_COLUMNS)
    outcomes = _read(base / OUTCOMES_DIR, OUTCOME_SCHEMA, _OUTCOME_COLUMNS)
    return predictions, outcomes


def load_references(
    registry: ModelRegistry, versions: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], dict[str, Any] | None]:
    """Return each (model, version)'s training reference; None when absent or unregistered."""
    out: dict[tuple[str, str], dict[str, Any] | None] = {}
    for model, version in versions:
        try:
            out[(model, version)] = registry.get(model, version).training_reference
        except (ModelNotFoundError, RegistryError):
            out[(model, version)] = None
    return out


def _versions(table: pa.Table) -> set[tuple[str, str]]:
    if table.num_rows == 0:
        return set()
    pairs = table.select(["model", "version"]).group_by(["model", "version"]).aggregate([])
    return set(zip(pairs["model"].to_pylist(), pairs["version"].to_pylist(), strict=True))


def compute_store_metrics(
    prediction_store: str | os.PathLike[str],
    registry_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
) -> MonitorRun:
    """Compute the metrics of the store at `prediction_store` and write the metrics table."""
    t0 = time.perf_counter()
    predictions, outcomes = read_monitoring_inputs(prediction_store)
    references = load_references(
        ModelRegistry(registry_dir), _versions(predictions) | _versions(outcomes)
    )
    t1 = time.perf_counter()
    table = compute_metrics(predictions, outcomes, references)
    t2 = time.perf_counter()
    path = metrics_path(out if out is not None else Path(prediction_store) / METRICS_DIR)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)
    t3 = time.perf_counter()
    groups = (
        table.select(["model", "version", "variant"])
        .group_by(["model", "version", "variant"])
        .aggregate([])
    )
    return MonitorRun(
        path=path,
        predictions=predictions.num_rows,
        outcomes=outcomes.num_rows,
        groups=groups.num_rows,
        rows=table.num_rows,
        read_s=t1 - t0,
        compute_s=t2 - t1,
        write_s=t3 - t2,
    )


def read_metrics(path: str | os.PathLike[str]) -> pa.Table:
    """Read a metrics table (a folder holding `METRICS_FILE`, or the file)."""
    file = metrics_path(path)
    if not file.is_file():
        raise FileNotFoundError(
            f"no metrics table at {str(file)!r}; run `streamml monitor compute` first"
        )
    return pq.read_table(file, schema=METRICS_SCHEMA)


def latest_windows(table: pa.Table) -> pa.Table:
    """Return each (model, version, variant)'s latest `hour` and `day` rows and its `all` rows."""
    if table.num_rows == 0:
        return table
    timed = table.filter(pc.field("window") != "all")
    last = timed.group_by(["model", "version", "variant", "window"]).aggregate(
        [("window_start", "max")]
    )
    keep = timed.join(last, ["model", "version", "variant", "window"])
    keep = keep.filter(pc.field("window_start") == pc.field("window_start_max"))
    keep = keep.drop_columns(["window_start_max"]).select(METRICS_SCHEMA.names)
    cumulative = table.filter(pc.field("window") == "all")
    return pa.concat_tables([keep.cast(METRICS_SCHEMA), cumulative])
