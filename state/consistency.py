"""Training/serving consistency: the online features of logged predictions, recomputed offline.

`verify_predictions` reads the prediction store, and for every online feature value a
prediction logged (value, `updated_at`, version, status) recomputes the value from the history
store with the point-in-time engine of `streamml.state.training_sets`, and sorts it into one of:

- **exact**: equal to the point-in-time value as of the request time: the online read as of
  the request time of the accepted events with event time up to the request time.
- **lagged**: not exact, but equal to the online read as of the request time of exactly the
  accepted events up to the logged `updated_at` (none when it is null): the feature flow had
  applied events up to another time than the request's. Behind it, a lagging flow; ahead of it,
  requests scored after their events were all applied (a replay, or the demo). The model holds
  when the flow applies each source's events in event-time order, or had applied them all.
- **mismatched**: neither; the value served is not one the history can explain.
- **version mismatch**: the logged feature version is not the definitions' version of the
  feature, or the history holds no rows of that version: nothing here can recompute it.
- **not checkable**: values not read from the online store, counted by reason: `fetched` and
  `defaulted` ones, `request` (the request's context), `not_served` (the online store did not
  serve the feature: logged as missing with no version) and `unknown` (neither the name nor the
  version is a definition's: an on-demand answer read from its store, or an online feature
  renamed by the model's contract whose version the definitions lack).

A logged feature is matched to a definition by name when the versions agree, else by version
(a model's contract may name an online feature differently). The feature's TTL plays no part:
an online read gives a stale value as it is, so the recomputation keeps values whatever their
age. An online read of a `count` or `sum` over an empty window is 0 where the point-in-time value
is null (nothing in the window): both mean the same. Values compare exactly in the units the
stream keeps them (`count` and `sum` to the fixed point `SUM_SCALE`); `mean`, `min`, `max` and
`last` within a relative tolerance (`REL_TOLERANCE`), for the float operations done in another
order offline. Variants of one request that logged the same value of a feature count once.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from streamml.state.definitions import FeatureDef
from streamml.state.feature_records import SUM_SCALE
from streamml.state.predictions import PREDICTION_SCHEMA, PREDICTIONS_DIR
from streamml.state.training_sets import build_training_set

__all__ = [
    "CATEGORIES",
    "REL_TOLERANCE",
    "ConsistencyReport",
    "FeatureCheck",
    "Mismatch",
    "verify_predictions",
]

REL_TOLERANCE = 1e-9
"""Relative tolerance of `mean`, `min`, `max` and `last` values (counts and sums are exact)."""
CATEGORIES = ("exact", "lagged", "mismatched", "version_mismatch", "not_checkable")
"""What becomes of each logged feature value (see the module docstring)."""
REQUEST_VERSION = "request"
"""The version logged for features of the request's context (see `operators.assembly`)."""
_NO_TTL = 2**62
_EXACT_KINDS = ("count", "sum")


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A logged value the history cannot explain, with both recomputations (None: no value)."""

    request_id: str
    account: str
    request_ts: int
    feature: str
    status: str
    version: str
    logged: float | None
    updated_at: int | None
    recomputed: float | None
    as_applied: float | None

    def to_json(self) -> dict[str, Any]:
        """Return the mismatch as a JSON-ready dict."""
        return {
            "request_id": self.request_id,
            "account": self.account,
            "request_ts": self.request_ts,
            "feature": self.feature,
            "status": self.status,
            "version": self.version,
            "logged": self.logged,
            "updated_at": self.updated_at,
            "recomputed": self.recomputed,
            "as_applied": self.as_applied,
        }


@dataclass(slots=True)
class FeatureCheck:
    """The counts of one logged feature (by the name the predictions logged)."""

    feature: str
    definition: str | None = None
    """The definition it was checked against (None when none matched)."""
    exact: int = 0
    lagged: int = 0
    mismatched: int = 0
    version_mismatch: int = 0
    not_checkable: Counter[str] = field(default_factory=Counter)
    unknown_versions: set[str] = field(default_factory=set)
    examples: list[Mismatch] = field(default_factory=list)

    @property
    def logged(self) -> int:
        """Every distinct logged value of the feature."""
        return self.checked + self.version_mismatch + sum(self.not_checkable.values())

    @property
    def checked(self) -> int:
        """Values recomputed and compared: exact, lagged or mismatched."""
        return self.exact + self.lagged + self.mismatched

    def to_json(self) -> dict[str, Any]:
        """Return the counts and examples as a JSON-ready dict."""
        return {
            "feature": self.feature,
            "definition": self.definition,
            "logged": self.logged,
            "checked": self.checked,
            "exact": self.exact,
            "lagged": self.lagged,
            "mismatched": self.mismatched,
            "version_mismatch": self.version_mismatch,
            "unknown_versions": sorted(self.unknown_versions),
            "not_checkable": sum(self.not_checkable.values()),
            "not_checkable_by_reason": dict(sorted(self.not_checkable.items())),
            "examples": [m.to_json() for m in self.examples],
        }


@dataclass(slots=True)
class ConsistencyReport:
    """What `verify_predictions` found, per logged feature (in first-logged order)."""

    predictions: int
    requests: int
    features: dict[str, FeatureCheck]
    since: int | None = None
    until: int | None = None

    @property
    def mismatched(self) -> int:
        """Values that neither recomputation explains, over every feature."""
        return sum(c.mismatched for c in self.features.values())

    @property
    def version_mismatch(self) -> int:
        """Values whose version the definitions or the history do not have."""
        return sum(c.version_mismatch for c in self.features.values())

    @property
    def checked(self) -> int:
        """Values recomputed and compared, over every feature."""
        return sum(c.checked for c in self.features.values())

    def to_json(self) -> dict[str, Any]:
        """Return the report as a JSON-ready dict."""
        return {
            "predictions": self.predictions,
            "requests": self.requests,
            "since": self.since,
            "until": self.until,
            "checked": self.checked,
            "mismatched": self.mismatched,
            "version_mismatch": self.version_mismatch,
            "features": [c.to_json() for c in self.features.values()],
        }


def verify_predictions(
    prediction_store: str | os.PathLike[str],
    history_root: str | os.PathLike[str],
    definitions: Mapping[str, FeatureDef],
    *,
    since: int | None = None,
    until: int | None = None,
    examples: int = 5,
    rel_tolerance: float = REL_TOLERANCE,
) -> ConsistencyReport:
    """Recompute the logged online features of the predictions at `prediction_store`.

    `definitions` maps feature names to their definitions (a definition file's or a state
    dir's); `since` and `until` (epoch ms, inclusive) bound the request times. Keeps up to
    `examples` mismatches per feature. See the module docstring for the categories.
    """
    rows = _logged_values(prediction_store, since, until)
    by_version = {f.version: f for f in definitions.values()}
    history_versions: dict[str, set[str]] = {}
    checks: dict[str, FeatureCheck] = {}
    todo: dict[tuple[str, str], tuple[FeatureDef, list[int]]] = {}
    names, versions, statuses = rows["name"], rows["version"], rows["status"]
    for i, (name, version, status) in enumerate(zip(names, versions, statuses, strict=True)):
        check = checks.get(name)
        if check is None:
            check = checks[name] = FeatureCheck(name)
        if status in ("fetched", "defaulted"):
            check.not_checkable[status] += 1
            continue
        if version == REQUEST_VERSION:
            check.not_checkable["request"] += 1
            continue
        named = definitions.get(name)
        f = named if named is not None and named.version == version else by_version.get(version)
        if f is None:
            if not version:
                check.not_checkable["not_served"] += 1
            elif named is not None:
                check.version_mismatch += 1
                check.unknown_versions.add(version)
            else:
                check.not_checkable["unknown"] += 1
            continue
        if f.name not in history_versions:
            history_versions[f.name] = _history_versions(history_root, f.name)
        if f.version not in history_versions[f.name]:
            check.version_mismatch += 1
            check.unknown_versions.add(version)
            continue
        check.definition = f.name
        todo.setdefault((name, f.name), (f, []))[1].append(i)
    for (name, _), (f, idx) in todo.items():
        _compare(checks[name], f, rows, idx, history_root, examples, rel_tolerance)
    requests = len(set(rows["request_id"]))
    return ConsistencyReport(rows["predictions"], requests, checks, since, until)


def _logged_values(root, since: int | None, until: int | None) -> dict[str, Any]:
    """Return the distinct logged feature values of each request, as Python lists by column."""
    import pyarrow.dataset as ds
    from streamml.state._parquet import read_partitioned

    ts = ds.field("request_ts")
    where = None
    if since is not None:
        where = ts >= pa.scalar(since, pa.timestamp("ms", tz="UTC"))
    if until is not None:
        upper = ts <= pa.scalar(until, pa.timestamp("ms", tz="UTC"))
        where = upper if where is None else where & upper
    table = read_partitioned(Path(root) / PREDICTIONS_DIR, PREDICTION_SCHEMA, where)
    table = table.select(["request_id", "account", "request_ts", "features"])
    parents = pc.list_parent_indices(table.column("features"))
    flat = pc.list_flatten(table.column("features"))
    if isinstance(flat, pa.ChunkedArray):
        flat = flat.combine_chunks()
    if isinstance(parents, pa.ChunkedArray):
        parents = parents.combine_chunks()
    base = table.drop_columns(["features"]).take(parents)
    cols = {
        "request_id": base.column("request_id"),
        "account": base.column("account"),
        "request_ts": base.column("request_ts").cast(pa.int64()),
    }
    for key in ("name", "value", "updated_at", "version", "status"):
        cols[key] = flat.field(key)
    keys = list(cols)
    distinct = pa.table(cols).group_by(keys, use_threads=False).aggregate([])
    out: dict[str, Any] = {k: distinct.column(k).to_pylist() for k in keys}
    out["predictions"] = table.num_rows
    return out


def _history_versions(root, feature: str) -> set[str]:
    """Return the feature versions the history of `feature` holds rows of.

    Read from each file's column statistics where a row group holds one version (the writers
    write one version per file), else from the column itself.
    """
    import pyarrow.parquet as pq

    found: set[str] = set()
    for path in sorted((Path(root) / feature).glob("day=*/*.parquet")):
        meta = pq.read_metadata(path)
        names = meta.schema.to_arrow_schema().names
        if "feature_version" not in names:
            continue
        col = names.index("feature_version")
        for g in range(meta.num_row_groups):
            stats = meta.row_group(g).column(col).statistics
            if stats is not None and stats.has_min_max and stats.min == stats.max:
                found.add(stats.min)
            elif meta.row_group(g).num_rows:
                part = pq.ParquetFile(path).read_row_group(g, columns=["feature_version"])
                found.update(v for v in pc.unique(part.column(0)).to_pylist() if v is not None)
    return found


def _compare(
    check: FeatureCheck,
    f: FeatureDef,
    rows: dict[str, Any],
    idx: list[int],
    history_root,
    examples: int,
    rel_tolerance: float,
) -> None:
    """Recompute the values `idx` of `rows` (exact and as applied) and count them in `check`."""
    accounts = [rows["account"][i] for i in idx]
    times = [rows["request_ts"][i] for i in idx]
    applied = [rows["updated_at"][i] for i in idx]
    spine = pa.table(
        {
            "__entity": pa.array(accounts * 2, pa.string()),
            "__t": pa.array(times * 2, pa.int64()),
            "__applied": pa.array(times + applied, pa.int64()),
        }
    )
    got = build_training_set(
        spine,
        [replace(f, ttl_ms=_NO_TTL)],
        history_root,
        entity="__entity",
        time="__t",
        applied="__applied",
    )
    values = got.column(f.name).to_pylist()
    n = len(idx)
    same = _exact_equal if f.aggregation in _EXACT_KINDS else _close(rel_tolerance)
    zero = f.aggregation in _EXACT_KINDS
    for k, i in enumerate(idx):
        logged = rows["value"][i]
        exact, as_applied = values[k], values[n + k]
        if _agrees(logged, exact, same, zero):
            check.exact += 1
        elif _agrees(logged, as_applied, same, zero):
            check.lagged += 1
        else:
            check.mismatched += 1
            if len(check.examples) < examples:
                check.examples.append(
                    Mismatch(
                        rows["request_id"][i],
                        rows["account"][i],
                        rows["request_ts"][i],
                        rows["name"][i],
                        rows["status"][i],
                        rows["version"][i],
                        logged,
                        rows["updated_at"][i],
                        exact,
                        as_applied,
                    )
                )


def _agrees(logged: float | None, recomputed: float | None, same, zero_when_empty: bool) -> bool:
    """Whether a logged value is the recomputed one (an empty count or sum reads as 0)."""
    if logged is None:
        return recomputed is None
    if recomputed is None:
        if not zero_when_empty:
            return False
        recomputed = 0.0
    return same(logged, recomputed)


def _exact_equal(a: float, b: float) -> bool:
    return round(a * SUM_SCALE) == round(b * SUM_SCALE)


def _close(rel: float):
    def same(a: float, b: float) -> bool:
        return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)

    return same
