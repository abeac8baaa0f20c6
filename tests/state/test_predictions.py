from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from streamml.state.predictions import (
    FEATURE_STATUSES,
    PREDICTION_SCHEMA,
    FeatureRecord,
    Latency,
    PredictionRecord,
    PredictionWriter,
    TimeoutRecord,
    TimeoutWriter,
    read_predictions,
    read_timeouts,
)

DAY = 86_400_000
START = datetime(2025, 1, 1, tzinfo=UTC)
T0 = int(START.timestamp() * 1000)
CLASSES = ("wifi", "modem", "network")

names = st.text(min_size=1, max_size=12)
features = st.lists(
    st.builds(
        FeatureRecord,
        name=names,
        value=st.one_of(st.none(), st.floats(allow_nan=False)),
        updated_at=st.one_of(st.none(), st.integers(0, 2**62)),
        version=st.text(max_size=5),
        status=st.sampled_from(FEATURE_STATUSES),
    ),
    max_size=6,
)
probs = st.lists(st.floats(0, 1, width=32), min_size=3, max_size=3)
records = st.builds(
    PredictionRecord,
    request_id=st.text(max_size=10),
    model=names,
    version=names,
    variant=names,
    role=st.sampled_from(["answer", "shadow"]),
    account=st.text(max_size=20),
    request_ts=st.integers(T0 - 3 * DAY, T0 + 3 * DAY),
    label=st.sampled_from(CLASSES),
    probabilities=probs,
    classes=st.just(CLASSES),
    features=features,
    sha256=st.text(max_size=64),
    metadata_revision=st.integers(0, 2**62),
    scored_at=st.integers(T0, T0 + DAY),
    latency=st.builds(Latency, *[st.floats(0, 1e6)] * 5),
)


def as_row(r: PredictionRecord, pipeline: str) -> dict:
    return {
        "request_id": r.request_id,
        "model": r.model,
        "version": r.version,
        "variant": r.variant,
        "role": r.role,
        "account": r.account,
        "request_ts": r.request_ts,
        "label": r.label,
        "probabilities": [float(np.float32(p)) for p in r.probabilities],
        "classes": list(r.classes),
        "features": [
            {
                "name": f.name,
                "value": f.value,
                "updated_at": f.updated_at,
                "version": f.version,
                "status": f.status,
            }
            for f in r.features
        ],
        "sha256": r.sha256,
        "metadata_revision": r.metadata_revision,
        "pipeline_version": pipeline,
        "latency": {
            "read_ms": r.latency.read_ms,
            "fetch_ms": r.latency.fetch_ms,
            "wait_ms": r.latency.wait_ms,
            "score_ms": r.latency.score_ms,
            "total_ms": r.latency.total_ms,
        },
        "scored_at": r.scored_at,
        "date": (START + timedelta(milliseconds=r.request_ts - T0)).date().isoformat(),
    }


def stored_rows(root: Path) -> list[dict]:
    table = read_predictions(root)
    for col in ("request_ts", "scored_at"):
        i = table.schema.get_field_index(col)
        table = table.set_column(i, col, table[col].cast("int64"))
    return table.to_pylist()


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(records, max_size=25), st.integers(1, 10))
def test_records_round_trip_through_day_partitions(
    tmp_path_factory: pytest.TempPathFactory, recs: list[PredictionRecord], per_flush: int
) -> None:
    root = tmp_path_factory.mktemp("preds")
    writer = PredictionWriter(root, "pipe-1", writer_id="w0", rows_per_flush=per_flush)
    writer.extend(recs)
    writer.close()
    key = lambda row: (row["date"], row["request_ts"], repr(row))  # noqa: E731
    expected = sorted((as_row(r, "pipe-1") for r in recs), key=key)
    assert sorted(stored_rows(root), key=key) == expected
    assert writer.rows_written == len(recs) and writer.buffered == 0
    seqs = []
    for path in root.rglob("*.parquet"):
        day = path.parent.name.removeprefix("date=")
        assert path.name.startswith("part-w0-")
        seqs.append(int(path.stem.removeprefix("part-w0-")))
        for ts in pq.read_table(path)["request_ts"].to_pylist():
            assert ts.date().isoformat() == day
    assert sorted(seqs) == list(range(writer.seq))


def record(rid: str, ts: int = T0, role: str = "answer") -> PredictionRecord:
    return PredictionRecord(
        request_id=rid,
        model="m",
        version="1",
        variant="live" if role == "answer" else "shadow:2",
        role=role,
        account="a",
        request_ts=ts,
        label="wifi",
        probabilities=(0.7, 0.2, 0.1),
        classes=CLASSES,
        features=(FeatureRecord("x", 1.0, T0 - 5, "v1", "fresh"),),
        sha256="s",
        metadata_revision=1,
        scored_at=ts + 3,
    )


def test_layout_and_reading_one_request(tmp_path: Path) -> None:
    writer = PredictionWriter(tmp_path, "p", writer_id="w7", rows_per_flush=100)
    writer.extend([record("r1"), record("r1", role="shadow"), record("r2", T0 + DAY)])
    assert list(tmp_path.iterdir()) == []
    writer.flush()
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.parquet"))
    assert files == [
        "predictions/date=2025-01-01/part-w7-000000.parquet",
        "predictions/date=2025-01-02/part-w7-000001.parquet",
    ]
    one = read_predictions(tmp_path, "r1")
    assert one.num_rows == 2 and set(one["role"].to_pylist()) == {"answer", "shadow"}
    assert read_predictions(tmp_path, "nope").num_rows == 0
    assert read_predictions(tmp_path / "absent").schema.names == [
        *PREDICTION_SCHEMA.names,
        "date",
    ]


def test_discard_from_drops_later_files_of_this_writer_only(tmp_path: Path) -> None:
    mine = PredictionWriter(tmp_path, "p", writer_id="w0", rows_per_flush=1)
    other = PredictionWriter(tmp_path, "p", writer_id="w1", rows_per_flush=1)
    for i in range(4):
        mine.append(record(f"m{i}", T0 + i * DAY // 2))
        other.append(record(f"o{i}"))
    mine.append(record("buffered"))
    mine.rows_per_flush = 10
    mine.append(record("kept-in-buffer"))
    assert mine.buffered == 1
    mine.discard_from(2)
    assert mine.buffered == 0
    ids = sorted(read_predictions(tmp_path)["request_id"].to_pylist())
    assert ids == ["m0", "m1", "o0", "o1", "o2", "o3"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"role": "primary"}, "role must be one of"),
        ({"probabilities": (1.0,)}, "one per class"),
        ({"features": (FeatureRecord("x", 1.0, None, "v", "old"),)}, "status 'old'"),
        ({"features": (FeatureRecord("x", float("nan"), None, "v", "fresh"),)}, "NaN"),
    ],
)
def test_bad_records_are_refused(tmp_path: Path, change: dict, message: str) -> None:
    writer = PredictionWriter(tmp_path, "p")
    with pytest.raises(ValueError, match=message):
        writer.append(replace(record("r"), **change))
    assert writer.buffered == 0


def test_timeouts_round_trip(tmp_path: Path) -> None:
    writer = TimeoutWriter(tmp_path, "p", writer_id="w0")
    rec = TimeoutRecord("r9", "m", "a", T0 + 10, ("node_health", "latency_ms"), "deadline", 4, T0)
    writer.append(rec)
    writer.close()
    rows = read_timeouts(tmp_path, "r9").to_pylist()
    assert len(rows) == 1
    row = rows[0]
    assert row["missing"] == ["node_health", "latency_ms"] and row["reason"] == "deadline"
    assert row["request_ts"].timestamp() * 1000 == T0 + 10 and row["date"] == "2025-01-01"
    assert row["pipeline_version"] == "p" and row["metadata_revision"] == 4
