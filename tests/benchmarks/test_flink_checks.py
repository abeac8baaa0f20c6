"""Tests of the checks of the Flink SQL baseline: brute-force windows, dropped rows, read counts.

They run in the project's environment on small real files; Flink itself is not started.
"""

from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path

import pytest
from streamml.benchmarks.flink_baseline import FlinkResult
from streamml.benchmarks.flink_checks import (
    FlinkCheckError,
    brute_force_alert_windows,
    check_flink_read,
    compare_alert_windows,
    event_time_ordered,
    read_alert_windows,
)
from streamml.benchmarks.flink_job import _scan_csv
from streamml.operators.sources import GeneratorConfig

from streamml.generate import write_events


def _csv(path: Path, rows: list[tuple[str, int]]) -> Path:
    path.write_text("account,ts,code\n" + "".join(f"{a},{ts},E101\n" for a, ts in rows))
    return path


def _naive_windows(
    rows: list[tuple[str, int]], window_ms: int, slide_ms: int, threshold: int
) -> dict[tuple[str, int], int]:
    """Every (account, window start) a row falls in, counted one row at a time."""
    counts: dict[tuple[str, int], int] = {}
    for account, ts in rows:
        start = ts - ts % slide_ms
        while start > ts - window_ms:
            counts[(account, start)] = counts.get((account, start), 0) + 1
            start -= slide_ms
    return {k: v for k, v in counts.items() if v > threshold}


def test_brute_force_windows_of_a_small_file(tmp_path: Path) -> None:
    # windows of 3 s sliding by 1 s; "b" has too few rows for any window above 2
    rows = [("a", 10_000), ("b", 10_100), ("a", 11_500), ("a", 10_500), ("a", 12_500)]
    rows += [("a", 13_100), ("b", 13_200)]
    got = brute_force_alert_windows(
        _csv(tmp_path / "e.csv", rows), window_ms=3000, slide_ms=1000, threshold=2
    )
    assert got == {("a", 9_000): 3, ("a", 10_000): 4, ("a", 11_000): 3}


def test_brute_force_windows_equal_a_row_by_row_count(tmp_path: Path) -> None:
    rnd = random.Random(3)
    rows = [(f"acct-{rnd.randrange(6)}", rnd.randrange(0, 50 * 3_600_000)) for _ in range(6000)]
    path = _csv(tmp_path / "e.csv", rows)
    got = brute_force_alert_windows(path, window_ms=86_400_000, slide_ms=3_600_000, threshold=300)
    assert got == _naive_windows(rows, 86_400_000, 3_600_000, 300)
    assert got  # some windows are above the threshold


def test_compare_alert_windows_names_what_differs() -> None:
    expected = {("a", 0): 5, ("a", 1000): 6}
    compare_alert_windows(dict(expected), expected)
    for flink in ({("a", 0): 5}, {**expected, ("b", 0): 9}, {("a", 0): 5, ("a", 1000): 7}):
        with pytest.raises(FlinkCheckError, match="differ from a brute-force count"):
            compare_alert_windows(flink, expected)


def test_read_alert_windows_of_the_flink_sink_format(tmp_path: Path) -> None:
    out = tmp_path / "alerts"
    out.mkdir()
    (out / ".part-1-0.inprogress").write_text(
        'acct-00004511,"2026-01-01 06:00:00","2026-01-02 06:00:00",2033\n'
        'acct-00004511,"2026-01-01 07:00:00","2026-01-02 07:00:00",2085\n'
    )
    assert read_alert_windows(out) == {
        ("acct-00004511", 1767247200000): 2033,
        ("acct-00004511", 1767250800000): 2085,
    }
    (out / "part-2").write_text('acct-1,"2026-01-01 06:00:00","2026-01-01 07:00:00",2500\n')
    with pytest.raises(FlinkCheckError, match="window of 86400000 ms expected"):
        read_alert_windows(out)


def _result(events: int, behind: int | None, read: int | None) -> FlinkResult:
    return FlinkResult(
        events=events,
        alert_windows=0,
        seconds_total=1.0,
        seconds_startup=0.5,
        seconds_excluding_startup=0.5,
        events_per_s=2.0 * events,
        parallelism=1,
        flink_version="test",
        events_read_by_flink=read,
        rows_behind_watermark=behind,
    )


def test_generated_input_in_event_time_order_puts_no_row_behind_the_watermark(
    tmp_path: Path,
) -> None:
    (path,) = write_events(tmp_path / "errors.csv", GeneratorConfig(events=20_000, accounts=500))
    rows, behind = _scan_csv(path, 0)
    assert rows == 20_000 and behind > 0  # the generator sends some events out of order
    with pytest.raises(FlinkCheckError, match="behind Flink's watermark"):
        check_flink_read(_result(rows, behind, rows))

    ordered = event_time_ordered(path, tmp_path / "errors.by-ts.csv")
    assert _scan_csv(ordered, 0) == (20_000, 0)
    assert sorted(path.read_text().splitlines()) == sorted(ordered.read_text().splitlines())
    check_flink_read(_result(rows, 0, rows))
    # the same windows whichever order the rows are in
    assert brute_force_alert_windows(ordered, threshold=20) == brute_force_alert_windows(
        path, threshold=20
    )


def test_check_flink_read_wants_every_row_read() -> None:
    good = _result(100, 0, 100)
    check_flink_read(good)
    for bad in (replace(good, events_read_by_flink=99), replace(good, events_read_by_flink=None)):
        with pytest.raises(FlinkCheckError, match="rows of 100"):
            check_flink_read(bad)
    with pytest.raises(FlinkCheckError, match="behind"):
        check_flink_read(replace(good, rows_behind_watermark=None))
