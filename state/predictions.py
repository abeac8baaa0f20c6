"""The prediction store: one Parquet row per scored variant, with everything to reproduce it.

Layout: ``ROOT/predictions/date=YYYY-MM-DD/part-WRITER-SEQ.parquet``, partitioned by the UTC
day of the request time, and the timeout records beside them under ``ROOT/timeouts/``. A
request scored by an answering version and two shadows gives three rows with the same
`request_id`, told apart by `variant` and `role` ("answer" | "shadow"). Each row keeps the
feature values as scored (value, `updated_at`, feature version, status), the model version and
its sha256, the class probabilities, the metadata revision that routed it, the pipeline version
and where the time went. Timeout records (requests that ended without a prediction) have their
own schema and writer.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
from streamml.state._parquet import DayPartitionedWriter, read_partitioned

__all__ = [
    "FEATURE_STATUSES",
    "FEATURE_TYPE",
    "LATENCY_TYPE",
    "PREDICTIONS_DIR",
    "PREDICTION_SCHEMA",
    "ROLES",
    "TIMEOUTS_DIR",
    "TIMEOUT_SCHEMA",
    "FeatureRecord",
    "Latency",
    "PredictionRecord",
    "PredictionWriter",
    "TimeoutRecord",
    "TimeoutWriter",
    "read_predictions",
    "read_timeouts",
]

PREDICTIONS_DIR = "predictions"
"""Folder of the prediction rows under a prediction store's root."""
TIMEOUTS_DIR = "timeouts"
"""Folder of the timeout records under a prediction store's root."""
FEATURE_STATUSES = ("fresh", "stale", "missing", "fetched", "defaulted")
"""How a feature value came to be (see DESIGN.md, prediction requests)."""
ROLES = ("answer", "shadow")
"""Whether a variant's prediction was answered or only logged."""

_TS = pa.timestamp("ms", tz="UTC")
FEATURE_TYPE = pa.struct(
    [
        ("name", pa.string()),
        ("value", pa.float64()),
        ("updated_at", pa.int64()),
        ("version", pa.string()),
        ("status", pa.string()),
    ]
)
"""One scored feature: value (null when missing), epoch-ms `updated_at`, version and status."""
LATENCY_TYPE = pa.struct(
    [(f, pa.float64()) for f in ("read_ms", "fetch_ms", "wait_ms", "score_ms", "total_ms")]
)
"""Milliseconds spent reading the online store, fetching, waiting, scoring, and in total."""
PREDICTION_SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("model", pa.string()),
        ("version", pa.string()),
        ("variant", pa.string()),
        ("role", pa.string()),
        ("account", pa.string()),
        ("request_ts", _TS),
        ("label", pa.string()),
        ("probabilities", pa.list_(pa.float32())),
        ("classes", pa.list_(pa.string())),
        ("features", pa.list_(FEATURE_TYPE)),
        ("sha256", pa.string()),
        ("metadata_revision", pa.int64()),
        ("pipeline_version", pa.string()),
        ("latency", LATENCY_TYPE),
        ("scored_at", _TS),
    ]
)
"""Columns of the prediction store (plus the `date` partition column when read)."""
TIMEOUT_SCHEMA = pa.schema(
    [
        ("request_id", pa.string()),
        ("model", pa.string()),
        ("account", pa.string()),
        ("request_ts", _TS),
        ("missing", pa.list_(pa.string())),
        ("reason", pa.string()),
        ("metadata_revision", pa.int64()),
        ("pipeline_version", pa.string()),
        ("timed_out_at", _TS),
    ]
)
"""Columns of the timeout store (plus the `date` partition column when read)."""


class FeatureRecord(NamedTuple):
    """One feature as it went into the model (a named tuple: cheap to make, many are made)."""

    name: str
    value: float | None
    updated_at: int | None
    version: str
    status: str


class Latency(NamedTuple):
    """Where a request's time went, in milliseconds."""

    read_ms: float = 0.0
    fetch_ms: float = 0.0
    wait_ms: float = 0.0
    score_ms: float = 0.0
    total_ms: float = 0.0


_NO_LATENCY = Latency()


@dataclass(frozen=True, slots=True)
class PredictionRecord:
    """One scored variant of one request; times are epoch milliseconds (UTC).

    `features` are in the model's input order; `probabilities` follow `classes`; `sha256` is the
    model file's hash at scoring time.
    """

    request_id: str
    model: str
    version: str
    variant: str
    role: str
    account: str
    request_ts: int
    label: str
    probabilities: Sequence[float]
    classes: Sequence[str]
    features: Sequence[FeatureRecord]
    sha256: str
    metadata_revision: int
    scored_at: int
    latency: Latency = _NO_LATENCY

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form sent to the predictions topic and file."""
        lat = self.latency
        return {
            "request_id": self.request_id,
            "model": self.model,
            "version": self.version,
            "variant": self.variant,
            "role": self.role,
            "account": self.account,
            "ts": self.request_ts,
            "label": self.label,
            "probabilities": dict(zip(self.classes, self.probabilities, strict=True)),
            "features": {
                f.name: {
                    "value": f.value,
                    "updated_at": f.updated_at,
                    "version": f.version,
                    "status": f.status,
                }
                for f in self.features
            },
            "sha256": self.sha256,
            "metadata_revision": self.metadata_revision,
            "scored_at": self.scored_at,
            "latency_ms": {
                "read": lat.read_ms,
                "fetch": lat.fetch_ms,
                "wait": lat.wait_ms,
                "score": lat.score_ms,
                "total": lat.total_ms,
            },
        }


@dataclass(frozen=True, slots=True)
class TimeoutRecord:
    """A request that ended without a prediction: which features were missing, and why."""

    request_id: str
    model: str
    account: str
    request_ts: int
    missing: Sequence[str]
    reason: str
    metadata_revision: int
    timed_out_at: int

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form written to the timeouts file."""
        return {
            "request_id": self.request_id,
            "model": self.model,
            "account": self.account,
            "ts": self.request_ts,
            "missing": list(self.missing),
            "reason": self.reason,
            "metadata_revision": self.metadata_revision,
            "timed_out_at": self.timed_out_at,
        }


class PredictionWriter(DayPartitionedWriter[PredictionRecord]):
    """Append `PredictionRecord`s to the store at `root` (one writer per worker)."""

    schema = PREDICTION_SCHEMA
    subdir = PREDICTIONS_DIR

    def _day_ms(self, record: PredictionRecord) -> int:
        return record.request_ts

    def _check(self, r: PredictionRecord) -> None:
        if r.role not in ROLES:
            raise ValueError(f"{r.request_id}: role must be one of {ROLES}, got {r.role!r}")
        if len(r.probabilities) != len(r.classes):
            raise ValueError(
                f"{r.request_id}: {len(r.probabilities)} probabilities for "
                f"{len(r.classes)} classes; expected one per class"
            )
        for f in r.features:
            if f.status not in FEATURE_STATUSES:
                raise ValueError(
                    f"{r.request_id}: feature {f.name} has status {f.status!r}; expected one "
                    f"of {FEATURE_STATUSES}"
                )
            if f.value is not None and math.isnan(f.value):
                raise ValueError(f"{r.request_id}: feature {f.name} is NaN; store null instead")

    def _table(self, records: Sequence[PredictionRecord]) -> pa.Table:
        cols: dict[str, pa.Array] = {}
        for name in (
            "request_id",
            "model",
            "version",
            "variant",
            "role",
            "account",
            "request_ts",
            "label",
            "sha256",
            "metadata_revision",
            "scored_at",
        ):
            cols[name] = pa.array(
                [getattr(r, name) for r in records], type=self.schema.field(name).type
            )
        cols["probabilities"] = _lists([r.probabilities for r in records], pa.float32())
        cols["classes"] = _lists([r.classes for r in records], pa.string())
        features = [r.features for r in records]
        flat = [f for fs in features for f in fs]
        columns = list(zip(*flat, strict=True)) if flat else [()] * len(FEATURE_TYPE)
        struct = pa.StructArray.from_arrays(
            [pa.array(c, type=FEATURE_TYPE.field(i).type) for i, c in enumerate(columns)],
            fields=list(FEATURE_TYPE),
        )
        cols["features"] = pa.ListArray.from_arrays(_offsets(features), struct)
        lat = list(zip(*(r.latency for r in records), strict=True))
        cols["latency"] = pa.StructArray.from_arrays(
            [pa.array(c, type=pa.float64()) for c in lat], fields=list(LATENCY_TYPE)
        )
        cols["pipeline_version"] = pa.array(
            [self.pipeline_version] * len(records), type=pa.string()
        )
        return pa.table({n: cols[n] for n in self.schema.names})


def _offsets(lists: Sequence[Sequence[object]]) -> pa.Array:
    sizes = np.fromiter((len(x) for x in lists), dtype=np.int32, count=len(lists))
    return pa.array(np.concatenate([[0], np.cumsum(sizes, dtype=np.int32)]), type=pa.int32())


def _lists(lists: Sequence[Sequence[object]], item: pa.DataType) -> pa.Array:
    flat = pa.array([x for xs in lists for x in xs], type=item)
    return pa.ListArray.from_arrays(_offsets(lists), flat)


class TimeoutWriter(DayPartitionedWriter[TimeoutRecord]):
    """Append `TimeoutRecord`s to the timeout store at `root` (one writer per worker)."""

    schema = TIMEOUT_SCHEMA
    subdir = TIMEOUTS_DIR

    def _day_ms(self, record: TimeoutRecord) -> int:
        return record.request_ts

    def _table(self, records: Sequence[TimeoutRecord]) -> pa.Table:
        cols = {
            name: [getattr(r, name) for r in records]
            for name in (
                "request_id",
                "model",
                "account",
                "request_ts",
                "reason",
                "metadata_revision",
                "timed_out_at",
            )
        }
        cols["missing"] = [list(r.missing) for r in records]
        cols["pipeline_version"] = [self.pipeline_version] * len(records)
        return pa.table({n: pa.array(cols[n], type=self.schema.field(n).type) for n in cols})


def _by_request(request_id: str | None) -> ds.Expression | None:
    return None if request_id is None else ds.field("request_id") == request_id


def read_predictions(root: str | os.PathLike[str], request_id: str | None = None) -> pa.Table:
    """Read the prediction store (every row, or the rows of one request) with a `date` column."""
    return read_partitioned(
        Path(root) / PREDICTIONS_DIR, PREDICTION_SCHEMA, _by_request(request_id)
    )


def read_timeouts(root: str | os.PathLike[str], request_id: str | None = None) -> pa.Table:
    """Read the timeout store (every row, or those of one request) with a `date` column."""
    return read_partitioned(Path(root) / TIMEOUTS_DIR, TIMEOUT_SCHEMA, _by_request(request_id))
