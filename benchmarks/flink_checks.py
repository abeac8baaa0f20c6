"""Checks of the Flink SQL baseline: every row read, none dropped as late, windows counted right.

:func:`run_checked_flink_sql` is what ``streamml bench error-count --flink`` runs: Flink reads a
copy of the input in event-time order (:func:`event_time_ordered`, the same rows), so that no row
is behind the watermark; the run fails (:class:`FlinkCheckError`) when any row was (it may have
been dropped as late), when Flink read another number of rows than the file holds, or when its
alert windows and their counts differ from a brute-force count over the file
(:func:`brute_force_alert_windows`). Runs in the project's environment (numpy, pyarrow), never
in ``.venv-flink``.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from streamml.benchmarks.flink_baseline import FlinkError, FlinkResult, run_flink_sql

__all__ = [
    "FlinkCheck",
    "FlinkCheckError",
    "Windows",
    "brute_force_alert_windows",
    "check_flink_read",
    "compare_alert_windows",
    "event_time_ordered",
    "read_alert_windows",
    "run_checked_flink_sql",
]


class FlinkCheckError(FlinkError):
    """The Flink job ran, but it read, dropped or counted something else than the input holds."""


Windows = dict[tuple[str, int], int]
"""Alert windows: ``(account, window start in epoch ms) -> COUNT(*)``."""


def event_time_ordered(csv_path: Path, out_path: Path) -> Path:
    """Write the rows of ``csv_path`` sorted by ``ts`` (ties in file order) to ``out_path``.

    The same rows and header (``account,ts,code``); kept and reused while it is newer than
    ``csv_path``. Returns ``out_path``.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    out_path = Path(out_path)
    if out_path.exists() and out_path.stat().st_mtime >= Path(csv_path).stat().st_mtime:
        return out_path
    table = pacsv.read_csv(
        csv_path,
        convert_options=pacsv.ConvertOptions(
            column_types={"account": pa.string(), "ts": pa.int64(), "code": pa.string()}
        ),
    )
    ordered = table.take(pc.sort_indices(table, [("ts", "ascending")]))
    tmp = out_path.with_name(out_path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(b"account,ts,code\n")
        pacsv.write_csv(ordered, fh, pacsv.WriteOptions(include_header=False, quoting_style="none"))
    os.replace(tmp, out_path)
    return out_path


def _epoch_ms(text: str) -> int:
    """Return the epoch ms of a Flink ``TIMESTAMP(3)`` written in UTC (``2026-01-01 05:00:00``)."""
    from datetime import UTC, datetime

    moment = datetime.fromisoformat(text.strip().strip('"').replace(" ", "T"))
    return round(moment.replace(tzinfo=UTC).timestamp() * 1000)


def read_alert_windows(output_dir: Path, window_ms: int = 86_400_000) -> Windows:
    """Return the alert windows the Flink job wrote under ``output_dir`` (hidden files too).

    Lines are ``account,window_start,window_end,count``; raises :class:`FlinkCheckError` on a
    window whose end is not its start plus ``window_ms``, or a window written twice.
    """
    out: Windows = {}
    for root, _dirs, names in os.walk(output_dir):
        for name in sorted(names):
            with open(os.path.join(root, name), encoding="utf-8") as fh:
                for line in fh:
                    if not line.strip():
                        continue
                    account, start, end, count = line.rstrip("\n").rsplit(",", 3)
                    key = (account.strip('"'), _epoch_ms(start))
                    if _epoch_ms(end) - key[1] != window_ms:
                        raise FlinkCheckError(f"window of {window_ms} ms expected, got {line!r}")
                    if key in out:
                        raise FlinkCheckError(f"window written twice: {line!r}")
                    out[key] = int(count)
    return out


def brute_force_alert_windows(
    csv_path: Path,
    *,
    window_ms: int = 86_400_000,
    slide_ms: int = 3_600_000,
    threshold: int = 2000,
) -> Windows:
    """Count every row of ``csv_path`` into its HOP windows; return those above ``threshold``.

    Windows are aligned to the epoch as Flink's: a row at ``ts`` is in the ``window_ms /
    slide_ms`` windows ``[s, s + window_ms)`` with ``s`` a multiple of ``slide_ms`` and
    ``s <= ts < s + window_ms``. Every row counts, whatever its order in the file.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    if window_ms <= 0 or slide_ms <= 0 or window_ms % slide_ms:
        raise ValueError(f"window_ms must be a positive multiple of slide_ms, got {window_ms}")
    table = pacsv.read_csv(
        csv_path,
        convert_options=pacsv.ConvertOptions(
            column_types={"account": pa.string(), "ts": pa.int64()},
            include_columns=["account", "ts"],
        ),
    )
    totals = pc.value_counts(table.column("account"))
    # an account with at most `threshold` rows in all has no window above it
    heavy = totals.filter(pc.greater(totals.field("counts"), threshold)).field("values")
    table = table.filter(pc.is_in(table.column("account"), value_set=heavy))
    n = window_ms // slide_ms
    out: Windows = {}
    accounts = table.column("account").to_numpy(zero_copy_only=False)
    slots = table.column("ts").to_numpy() // slide_ms
    for account in np.unique(accounts):
        mine = slots[accounts == account]
        first = int(mine.min()) - (n - 1)
        per_slot = np.bincount(mine - first, minlength=int(mine.max()) - first + 1)
        # the window starting at slot s holds slots [s, s + n - 1]
        csum = np.concatenate(([0], np.cumsum(per_slot)))
        starts = np.arange(len(per_slot))
        counts = csum[np.minimum(starts + n, len(per_slot))] - csum[starts]
        for s in np.flatnonzero(counts > threshold):
            out[(str(account), int((first + s) * slide_ms))] = int(counts[s])
    return out


def compare_alert_windows(flink: Windows, expected: Windows) -> None:
    """Raise :class:`FlinkCheckError` unless ``flink`` holds exactly the ``expected`` windows."""
    if flink == expected:
        return
    missing = sorted(set(expected) - set(flink))
    extra = sorted(set(flink) - set(expected))
    wrong = sorted(k for k in set(flink) & set(expected) if flink[k] != expected[k])
    raise FlinkCheckError(
        f"Flink's alert windows differ from a brute-force count: {len(missing)} missing "
        f"(e.g. {missing[:3]}), {len(extra)} extra (e.g. {extra[:3]}), {len(wrong)} with "
        f"another count (e.g. {[(k, flink[k], expected[k]) for k in wrong[:3]]}); "
        f"{len(expected)} expected"
    )


def check_flink_read(result: FlinkResult) -> None:
    """Raise :class:`FlinkCheckError` unless Flink read every row and none was behind the watermark.

    A row behind the watermark may be dropped as late by the window operator: the check wants
    none (input in event-time order, or a watermark delay covering the disorder), and a batch
    ``COUNT(*)`` of the same source equal to the file's rows.
    """
    if result.rows_behind_watermark is None or result.rows_behind_watermark != 0:
        raise FlinkCheckError(
            f"{result.rows_behind_watermark} rows were behind Flink's watermark (they may be "
            "dropped as late): expected 0; give Flink its input in event-time order"
        )
    if result.events_read_by_flink != result.events:
        raise FlinkCheckError(
            f"Flink read {result.events_read_by_flink} rows of {result.events}: expected all"
        )


@dataclass(frozen=True)
class FlinkCheck:
    """A Flink run checked: what it measured, and what the checks compared."""

    result: FlinkResult
    ordered_input: Path
    alert_windows_checked: int


def run_checked_flink_sql(
    csv_path: Path,
    work_dir: Path,
    *,
    threshold: int = 2000,
    parallelism: int = 1,
    window_ms: int = 86_400_000,
    slide_ms: int = 3_600_000,
) -> FlinkCheck:
    """Run Flink SQL on ``csv_path`` in event-time order and check its result.

    The ordered copy is kept beside ``csv_path`` (``NAME.by-ts.csv``); the alert windows go to
    a fresh directory under ``work_dir``. Raises :class:`FlinkCheckError` when a row was behind
    the watermark, Flink read another number of rows, or its alert windows differ from
    :func:`brute_force_alert_windows` of ``csv_path``.
    """
    csv_path = Path(csv_path)
    ordered = event_time_ordered(csv_path, csv_path.with_name(csv_path.stem + ".by-ts.csv"))
    out = Path(work_dir) / f"flink-alerts-{time.time_ns():x}"
    result = run_flink_sql(
        ordered,
        window_ms=window_ms,
        slide_ms=slide_ms,
        threshold=threshold,
        parallelism=parallelism,
        count_check=True,
        output_dir=out,
    )
    try:
        check_flink_read(result)
        flink = read_alert_windows(out, window_ms)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if len(flink) != result.alert_windows:
        raise FlinkCheckError(
            f"read {len(flink)} alert windows, Flink wrote {result.alert_windows}"
        )
    expected = brute_force_alert_windows(
        csv_path, window_ms=window_ms, slide_ms=slide_ms, threshold=threshold
    )
    compare_alert_windows(flink, expected)
    return FlinkCheck(result, ordered, len(expected))
