"""Monitoring over the stores: read predictions and outcomes, compute, write the metrics table.

The metrics table (`streamml.operators.monitoring.METRICS_SCHEMA`) is one Parquet file,
``OUT/metrics.parquet`` (by default ``PREDICTION_STORE/metrics/``), replaced atomically by each
run. Runs are incremental by day: both stores are partitioned by the UTC day of the request
time, and an hour or day window depends only on its own day's files. ``OUT/days/`` keeps, per
day, the metrics of its hour and day windows (``date=D.parquet``), the day's additive statistics
(``date=D.npz``) and, in ``manifest.json``, the files (name, size, mtime) and training
references they were computed from. A run recomputes only the days whose files or references
changed (all of them with `full`), drops the days whose files are gone, and sums every day's
statistics into the cumulative figures. Only the columns the metrics need are read.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from streamml.onnx_models.errors import ModelNotFoundError, RegistryError
from streamml.onnx_models.registry import ModelRegistry
from streamml.operators.monitoring import METRICS_SCHEMA, WINDOWS, metrics_of
from streamml.operators.monitoring_stats import GroupStats, Key, window_stats
from streamml.state._parquet import read_partitioned
from streamml.state.outcomes import OUTCOME_SCHEMA, OUTCOMES_DIR
from streamml.state.predictions import PREDICTION_SCHEMA, PREDICTIONS_DIR

__all__ = [
    "DAYS_DIR",
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
DAYS_DIR = "days"
"""Folder of the per-day metrics and statistics beside the metrics table."""
_CACHE_FORMAT = 1
"""Bumped when the per-day files change meaning: every day is then computed again."""

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
    days: int = 0
    days_computed: int = 0

    @property
    def seconds(self) -> float:
        """Total wall time."""
        return self.read_s + self.compute_s + self.write_s


def metrics_path(out: str | os.PathLike[str]) -> Path:
    """Return the metrics table's file in folder `out` (or `out` itself if it is a .parquet)."""
    p = Path(out)
    return p if p.suffix == ".parquet" else p / METRICS_FILE


def read_monitoring_inputs(root: str | os.PathLike[str]) -> tuple[pa.Table, pa.Table]:
    """Return the prediction rows and outcome rows of the store at `root` (needed columns)."""
    base = Path(root)
    predictions = read_partitioned(
        base / PREDICTIONS_DIR, PREDICTION_SCHEMA, columns=_PREDICTION_COLUMNS
    )
    outcomes = read_partitioned(base / OUTCOMES_DIR, OUTCOME_SCHEMA, columns=_OUTCOME_COLUMNS)
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


def _day_files(root: Path) -> dict[str, list[list[Any]]]:
    """Return, per day, the [folder/name, size, mtime_ns] of every file of both stores."""
    out: dict[str, list[list[Any]]] = {}
    for sub in (PREDICTIONS_DIR, OUTCOMES_DIR):
        for day_dir in sorted((root / sub).glob("date=*")):
            day = day_dir.name[len("date=") :]
            for f in sorted(day_dir.glob("*.parquet")):
                st = f.stat()
                out.setdefault(day, []).append([f"{sub}/{f.name}", st.st_size, st.st_mtime_ns])
    return out


def _read_day(root: Path, day: str) -> tuple[pa.Table, pa.Table]:
    tables = []
    for sub, schema, cols in (
        (PREDICTIONS_DIR, PREDICTION_SCHEMA, _PREDICTION_COLUMNS),
        (OUTCOMES_DIR, OUTCOME_SCHEMA, _OUTCOME_COLUMNS),
    ):
        folder = root / sub / f"date={day}"
        files = sorted(str(f) for f in folder.glob("*.parquet")) if folder.is_dir() else []
        if files:
            tables.append(ds.dataset(files, schema=schema, format="parquet").to_table(list(cols)))
        else:
            tables.append(pa.schema([schema.field(c) for c in cols]).empty_table())
    return tables[0], tables[1]


class _References:
    """Training references by (model, version), read from the registry once per run."""

    def __init__(self, registry: ModelRegistry) -> None:
        self.registry = registry
        self.cache: dict[tuple[str, str], dict[str, Any] | None] = {}

    def get(self, versions: Iterable[tuple[str, str]]) -> dict[tuple[str, str], Any]:
        missing = [v for v in versions if v not in self.cache]
        self.cache.update(load_references(self.registry, missing))
        return {v: self.cache[v] for v in versions}

    def digests(self, versions: Iterable[tuple[str, str]]) -> dict[str, str | None]:
        refs = self.get(list(versions))
        return {
            f"{m}@{v}": None if r is None else hashlib.sha256(orjson.dumps(r)).hexdigest()
            for (m, v), r in sorted(refs.items())
        }


def _write_atomic(path: Path, data: bytes | pa.Table) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(data, pa.Table):
        pq.write_table(data, tmp, compression="zstd")
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)


def _save_stats(path: Path, stats: dict[Key, GroupStats]) -> None:
    meta = [[*key, s.classes] for key, s in stats.items()]
    arrays: dict[str, np.ndarray] = {"meta": np.array(orjson.dumps(meta).decode())}
    for i, s in enumerate(stats.values()):
        arrays |= s.to_arrays(f"g{i}")
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _load_stats(path: Path) -> dict[Key, GroupStats]:
    with np.load(path) as npz:
        arrays = {name: npz[name] for name in npz.files}
    out = {}
    for i, (model, version, variant, classes) in enumerate(orjson.loads(str(arrays["meta"]))):
        out[(model, version, variant)] = GroupStats.from_arrays(classes, arrays, f"g{i}")
    return out


def compute_store_metrics(
    prediction_store: str | os.PathLike[str],
    registry_dir: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    full: bool = False,
) -> MonitorRun:
    """Compute the metrics of the store at `prediction_store` and write the metrics table.

    Only the days whose files or training references changed since the last run into the same
    `out` are computed again (every day with `full`); see the module docstring.
    """
    t0 = time.perf_counter()
    root = Path(prediction_store)
    path = metrics_path(out if out is not None else root / METRICS_DIR)
    cache = path.parent / DAYS_DIR
    cache.mkdir(parents=True, exist_ok=True)
    manifest_path = cache / "manifest.json"
    manifest: dict[str, Any] = {"format": _CACHE_FORMAT, "days": {}}
    if manifest_path.is_file() and not full:
        stored = orjson.loads(manifest_path.read_bytes())
        if stored.get("format") == _CACHE_FORMAT:
            manifest = stored
    references = _References(ModelRegistry(registry_dir))
    files = _day_files(root)
    days: dict[str, Any] = manifest["days"]
    for day in [d for d in days if d not in files]:
        for suffix in (".parquet", ".npz"):
            (cache / f"date={day}{suffix}").unlink(missing_ok=True)
        del days[day]
    sizes = {w: size for w, size in WINDOWS.items() if size is not None}
    compute_s = write_s = 0.0
    n_pred = n_out = computed = 0
    for day, day_files in files.items():
        known = days.get(day)
        if (
            known is not None
            and known["files"] == day_files
            and references.digests(tuple(v.split("@", 1)) for v in known["references"])
            == known["references"]
            and (cache / f"date={day}.npz").is_file()
            and (cache / f"date={day}.parquet").is_file()
        ):
            continue
        predictions, outcomes = _read_day(root, day)
        versions = _versions(predictions) | _versions(outcomes)
        refs = references.get(versions)
        t1 = time.perf_counter()
        stats = window_stats(predictions, outcomes, refs, sizes)
        table = metrics_of(stats)
        day_stats = {key: s.total() for key, s in stats["day"].items()}
        t2 = time.perf_counter()
        _write_atomic(cache / f"date={day}.parquet", table)
        _save_stats(cache / f"date={day}.npz", day_stats)
        days[day] = {"files": day_files, "references": references.digests(versions)}
        _write_atomic(manifest_path, orjson.dumps(manifest))
        t3 = time.perf_counter()
        compute_s, write_s = compute_s + t2 - t1, write_s + t3 - t2
        n_pred, n_out = n_pred + predictions.num_rows, n_out + outcomes.num_rows
        computed += 1
    _write_atomic(manifest_path, orjson.dumps(manifest))
    totals: dict[Key, GroupStats] = {}
    tables = []
    for day in sorted(days):
        tables.append(pq.read_table(cache / f"date={day}.parquet", schema=METRICS_SCHEMA))
        for key, s in _load_stats(cache / f"date={day}.npz").items():
            totals[key] = totals[key].total(s) if key in totals else s
    t1 = time.perf_counter()
    tables.append(metrics_of({"all": totals}))
    table = pa.concat_tables(tables) if tables else METRICS_SCHEMA.empty_table()
    t2 = time.perf_counter()
    _write_atomic(path, table)
    t3 = time.perf_counter()
    return MonitorRun(
        path=path,
        predictions=n_pred,
        outcomes=n_out,
        groups=len(totals),
        rows=table.num_rows,
        read_s=(t1 - t0) - compute_s - write_s,
        compute_s=compute_s + t2 - t1,
        write_s=write_s + t3 - t2,
        days=len(days),
        days_computed=computed,
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
