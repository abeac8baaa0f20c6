"""Point-in-time training sets: `build_training_set` on a 1M-row spine x 10 features.

The history store is written by the features flow (one process, the product's defaults) over
generated speed tests for the ten features of `streamml bench online-reads` (the five bundled
speed-test features and five more); the spine draws accounts and times uniformly over the
events' span. Times `build_training_set` (DuckDB, one range join per feature) `--repeats`
times, median with min and max, and checks a sample of rows against a scan of the history.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
from streamml.benchmarks.online_reads import _definitions
from streamml.dataflows.features import FeaturesConfig, SourceInput
from streamml.operators.sources import GeneratorConfig, generate_speed_tests
from streamml.state.history import read_history
from streamml.state.training_sets import build_training_set

__all__ = ["register", "run_training_sets"]


def _history(root: Path, events: int, accounts: int) -> tuple[int, int]:
    defs = root / "features.toml"
    features = _definitions()
    text = "[entities.account]\n"
    src = features[0].source
    fields = ", ".join(f'{k} = "{v}"' for k, v in src.fields.items())
    text += (
        f'[sources.{src.name}]\nkind = "file"\nentity = "account"\nkey = "account"\n'
        f'time = "ts"\nfields = {{ {fields} }}\n'
    )
    for f in features:
        body = f.to_json()
        text += (
            f'[features.{f.name}]\nsource = "{src.name}"\naggregation = "{f.aggregation}"\n'
            + (f'field = "{f.field}"\n' if f.field else "")
            + f'bucket = "{body["bucket"]}"\nwindow = "{body["window"]}"\nttl = "{body["ttl"]}"\n'
        )
    defs.write_text(text)
    gen = GeneratorConfig(events=events, accounts=accounts, seed=9, start_ms=1_767_225_600_000)
    keys, ts, fields_ = generate_speed_tests(gen)
    names = keys.to_pylist()
    cols = {k: v.tolist() for k, v in fields_.items()}
    tl = ts.tolist()
    data = root / "tests.jsonl"
    with open(data, "wb") as f:
        for i in range(len(names)):
            row = {"account": names[i].decode(), "ts": tl[i], **{k: v[i] for k, v in cols.items()}}
            f.write(orjson.dumps(row) + b"\n")
    config = FeaturesConfig(
        inputs=(SourceInput(src.name, "file", (str(data),)),),
        state_dir=root / "state",
        definitions_path=defs,
        history_dir=root / "history",
        settle_ms=0,
    )
    env = {**os.environ, **config.to_env()}
    subprocess.run(
        [sys.executable, "-m", "bytewax.run", "streamml.dataflows.features:flow"],
        env=env,
        check=True,
    )
    return int(ts.min()), int(ts.max())


def run_training_sets(
    *, spine_rows: int, events: int, accounts: int, repeats: int
) -> dict[str, float]:
    """Return seconds (median, min, max) to build the training set, and rows and features."""
    root = Path(tempfile.mkdtemp(prefix="streamml-bench-pit-"))
    try:
        lo, hi = _history(root, events, accounts)
        features = _definitions()
        rng = np.random.default_rng(2)
        ids = rng.integers(0, accounts, spine_rows)
        spine = pa.table(
            {
                "account": pa.array([f"acct-{i:08d}" for i in ids]),
                "ts": pa.array(rng.integers(lo, hi + 3_600_000, spine_rows)),
                "label": pa.array(rng.integers(0, 3, spine_rows)),
            }
        )
        took = []
        table = None
        for _ in range(repeats):
            t0 = time.perf_counter()
            table = build_training_set(spine, features, root / "history")
            took.append(time.perf_counter() - t0)
        assert table is not None
        _check(table, features, root / "history")
        filled = float(
            np.mean([1 - table.column(f.name).null_count / spine_rows for f in features])
        )
        return {
            "rows": spine_rows,
            "features": len(features),
            "seconds": float(np.median(took)),
            "min": min(took),
            "max": max(took),
            "filled": filled,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _check(table: pa.Table, features, history: Path) -> None:
    """Check the count of 20 rows against a scan of the history rows in their windows."""
    count = next(f for f in features if f.aggregation == "count")
    rows = read_history(history, count.name)
    accounts = np.asarray(rows.column("account").to_pylist())
    times = rows.column("event_time").cast(pa.int64()).to_numpy()
    for r in range(20):
        a, t = table.column("account")[r].as_py(), table.column("ts")[r].as_py()
        lo = (t // count.bucket_ms - count.window_buckets + 1) * count.bucket_ms
        sel = (accounts == a) & (times >= lo) & (times <= t)
        n = int(sel.sum())
        want = float(n) if n and t - times[sel].max() <= count.ttl_ms else None
        got = table.column(count.name)[r].as_py()
        if got != want:
            raise AssertionError(f"row {r}: {count.name} {got} != {want}")


def _cmd(args: argparse.Namespace) -> int:
    f = run_training_sets(
        spine_rows=args.rows, events=args.events, accounts=args.accounts, repeats=args.repeats
    )
    if args.json:
        print(orjson.dumps(f).decode())
        return 0
    print(
        f"{f['rows']:,} spine rows x {f['features']} features: {f['seconds']:.2f} s "
        f"(min {f['min']:.2f}, max {f['max']:.2f}); {f['filled']:.0%} of values present"
    )
    return 0


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=int, default=1_000_000, help="spine rows")
    p.add_argument("--events", type=int, default=1_000_000, help="speed tests in the history")
    p.add_argument("--accounts", type=int, default=100_000, help="distinct accounts")
    p.add_argument("--repeats", type=int, default=3, help="builds timed")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=_cmd)


def register(bench_sub: argparse._SubParsersAction) -> None:
    """Add `training-set` to the `streamml bench` subcommands."""
    p = bench_sub.add_parser(
        "training-set",
        help="point-in-time training set: 1M spine rows x 10 features from the history store",
        description=(__doc__ or "").split("\n\n")[0],
    )
    _add_arguments(p)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from `python -m streamml.benchmarks.training_sets`."""
    parser = argparse.ArgumentParser(prog="python -m streamml.benchmarks.training_sets")
    _add_arguments(parser)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
