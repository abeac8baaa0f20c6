"""Point-in-time correct training sets from the history store.

For each spine row (entity, time T, any other columns such as a label) and each feature, the value
an online read as of T would have given: the feature's aggregation over the accepted events of the
entity with event time <= T whose bucket lies in the window ending at T's bucket, i.e. with
``(T // bucket - window + 1) * bucket <= ts <= T``. Missing (null) when nothing falls in the window
or when the latest of those events is older than the feature's TTL. Taking the last history row
before T would be wrong: a 24-hour count read 30 hours after its last event is 0 (here: missing),
not the value that row holds.

The history store keeps each accepted event's contribution (1 for a count, else the aggregated
field's value) and source position, so every aggregation is recomputed exactly: sums in fixed
point as the stream keeps them (`SUM_SCALE`), `last` by the latest event time, then the later
position. DuckDB joins the spine to the history with one range join per feature.

With `applied`, each row also names the event time of the entity's latest event the online store
had applied (its `updated_at`; null: none yet), and the value is what an online read as of T
gives after exactly the accepted events up to then: the window still ends at T's bucket, but
holds the applied events of T's whole bucket (a store ahead of T has applied events later than T
in it) and only the buckets the store still kept: those of the window ending at that latest
event's bucket. This holds when each entity's events were applied in event-time order (or all
of them were). Without it, the applied events are those with event time <= T: the
point-in-time value.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import orjson
import pyarrow as pa
from streamml.state.definitions import FeatureDef
from streamml.state.feature_records import SUM_SCALE

__all__ = ["build_training_set"]

_AGG = {
    "count": "CAST(count(h.ts) AS DOUBLE)",
    "sum": f"sum(CAST(round_even(h.c * {SUM_SCALE}, 0) AS HUGEINT)) / {SUM_SCALE}",
    "mean": f"sum(CAST(round_even(h.c * {SUM_SCALE}, 0) AS HUGEINT)) / {SUM_SCALE} / count(h.ts)",
    "min": "min(h.c)",
    "max": "max(h.c)",
    "last": "arg_max(h.c, struct_pack(t := h.ts, p := h.pos))",
}


def build_training_set(
    spine: pa.Table,
    features: Sequence[FeatureDef],
    history_root: str | os.PathLike[str],
    *,
    entity: str = "account",
    time: str = "ts",
    applied: str | None = None,
) -> pa.Table:
    """Return `spine` with one column per feature: its value as of each row's time.

    `spine` needs a string `entity` column and an integer `time` column (epoch ms). The feature
    columns are float64, null where missing; the schema's metadata maps each feature to its
    version (``feature_versions``). Rows keep the spine's order. `applied` names an optional
    integer column: the event time of the entity's latest event the online store had applied
    (see the module docstring).
    """
    import duckdb

    if applied is not None and applied not in spine.column_names:
        raise ValueError(f"the spine has no column {applied!r} (applied event time)")
    if entity not in spine.column_names or time not in spine.column_names:
        raise ValueError(
            f"the spine needs columns {entity!r} (entity) and {time!r} (epoch ms), "
            f"got {spine.column_names}"
        )
    names = [f.name for f in features]
    clash = set(names) & set(spine.column_names)
    if clash:
        raise ValueError(f"the spine already has columns named like features: {sorted(clash)}")
    con = duckdb.connect()
    keyed = pa.table(
        {
            "row_id": pa.array(range(spine.num_rows), pa.int64()),
            "entity": spine.column(entity).cast(pa.string()),
            "t": spine.column(time).cast(pa.int64()),
            "a": spine.column(applied if applied is not None else time).cast(pa.int64()),
        }
    )
    con.register("spine", keyed)
    out = spine
    root = Path(history_root)
    versions = {}
    for f in features:
        versions[f.name] = f.version
        files = sorted((root / f.name).glob("day=*/*.parquet"))
        if not files:
            column = pa.nulls(spine.num_rows, pa.float64())
        else:
            column = _feature_column(con, f, [str(p) for p in files], applied is not None)
        out = out.append_column(pa.field(f.name, pa.float64()), column)
    meta = dict(out.schema.metadata or {})
    meta[b"feature_versions"] = orjson.dumps(versions)
    return out.replace_schema_metadata(meta)


def _feature_column(con, f: FeatureDef, files: list[str], applied: bool) -> pa.ChunkedArray:
    b, w = f.bucket_ms, f.window_buckets
    if applied:
        upper = f"least(s.a, (s.t // {b} + 1) * {b} - 1)"
        lower = f"(greatest(s.t, s.a) // {b} - {w - 1}) * {b}"
    else:
        upper, lower = "s.t", f"(s.t // {b} - {w - 1}) * {b}"
    query = f"""
        WITH h AS (
            SELECT account AS entity, epoch_ms(event_time) AS ts, contribution AS c,
                   position AS pos, feature_version AS version
            FROM read_parquet(?, hive_partitioning = false, union_by_name = true)
            WHERE feature_version = ?
        ),
        agg AS (
            SELECT s.row_id, s.t, count(h.ts) AS n, max(h.ts) AS updated, {_AGG[f.aggregation]} AS v
            FROM spine s JOIN h
              ON h.entity = s.entity
             AND h.ts <= {upper}
             AND h.ts >= {lower}
            GROUP BY s.row_id, s.t
        )
        SELECT CASE WHEN a.n > 0 AND s.t - a.updated <= {f.ttl_ms} THEN CAST(a.v AS DOUBLE)
               END AS v
        FROM spine s LEFT JOIN agg a ON a.row_id = s.row_id
        ORDER BY s.row_id
    """
    import duckdb

    try:
        return con.sql(query, params=[files, f.version]).to_arrow_table().column("v")
    except duckdb.BinderException as exc:
        raise ValueError(
            f"the history of {f.name} lacks a column point-in-time reads need ({exc}); its "
            "rows predate contributions: compute them again with `streamml features backfill`"
        ) from None
