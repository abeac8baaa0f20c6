"""Features flow throughput: five speed-test features from one source vs one, on the same file.

Generates `--events` speed tests over `--accounts` accounts as JSON lines (`generate_speed_tests`,
the bundled `speed_tests` source), then runs the features flow (`python -m bytewax.run
streamml.dataflows.features:flow`, one process, the defaults of `streamml run features`: the
history store is written, under the state dir, unless `--no-history`) over the file into a new
state dir, once with the source's five bundled features and once with only its count, taking
turns for `--repeats` rounds. Reports events/s over the flow's wall time (start-up included, the
same for both), CPU seconds and peak RSS, medians with min and max, and checks one sampled
account's values against `read_features` of a kernel run over that account's events.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import orjson
from streamml.dataflows.features import FeaturesConfig, SourceInput
from streamml.operators.aggregations import advance_features
from streamml.operators.sources import GeneratorConfig, generate_speed_tests
from streamml.state.definitions import default_definitions, default_definitions_path
from streamml.state.feature_records import RecordLayout, read_features
from streamml.state.online import OnlineStore

__all__ = ["register", "run_features_bench"]


def _write_events(path: Path, events: int, accounts: int) -> tuple:
    gen = GeneratorConfig(events=events, accounts=accounts, seed=5, start_ms=1_767_225_600_000)
    keys, ts, fields = generate_speed_tests(gen)
    names = keys.to_pylist()
    cols = {k: v.tolist() for k, v in fields.items()}
    tlist = ts.tolist()
    with open(path, "wb") as f:
        for i in range(len(names)):
            row = {"account": names[i].decode(), "ts": tlist[i]}
            row.update({k: v[i] for k, v in cols.items()})
            f.write(orjson.dumps(row) + b"\n")
    return keys, ts, fields


def _one_feature_definitions(path: Path) -> None:
    text = default_definitions_path().read_text()
    head, _, _ = text.partition("[features.")
    count = text[text.index("[features.speed_tests_24h]") :]
    count = count[: count.index("\n\n") + 1]
    path.write_text(head + count)


def _run(config: FeaturesConfig) -> dict[str, float]:
    env = {**os.environ, **config.to_env()}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "bytewax.run", "streamml.dataflows.features:flow"],
        env=env,
        check=True,
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mib": after.ru_maxrss / 1024}


def run_features_bench(
    *,
    events: int,
    accounts: int,
    repeats: int,
    data_dir: Path | None = None,
    history: bool = True,
) -> dict[str, dict[str, float]]:
    """Return events/s, CPU and RSS figures of the five-feature and one-feature runs.

    With `history` (the default of `streamml run features`) each run writes the history store.
    """
    root = Path(tempfile.mkdtemp(prefix="streamml-bench-features-", dir=data_dir))
    try:
        data = root / "speed_tests.jsonl"
        keys, ts, fields = _write_events(data, events, accounts)
        one = root / "one.toml"
        _one_feature_definitions(one)
        runs: dict[str, list[dict[str, float]]] = {"5 features": [], "1 feature": []}
        for rep in range(repeats):
            for name, defs in (("5 features", None), ("1 feature", one)):
                state = root / f"state-{rep}-{name[0]}"
                config = FeaturesConfig(
                    inputs=(SourceInput("speed_tests", "file", (str(data),)),),
                    state_dir=state,
                    definitions_path=defs,
                    history_dir=state / "history" if history else None,
                    settle_ms=0,
                )
                runs[name].append(_run(config))
                if rep == 0 and defs is None:
                    _check(state, keys, ts, fields)
                shutil.rmtree(state)
        out = {}
        for name, rs in runs.items():
            rates = [events / r["wall_s"] for r in rs]
            out[name] = {
                "events_per_s": float(np.median(rates)),
                "min": min(rates),
                "max": max(rates),
                "cpu_s": float(np.median([r["cpu_s"] for r in rs])),
                "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
            }
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _check(state: Path, keys, ts, fields) -> None:
    """One account's online values equal a kernel run over its events alone."""
    account = keys[0].as_py()
    mask = np.asarray([k == account for k in keys.to_pylist()])
    feats = default_definitions().of_source("speed_tests")
    layout = RecordLayout(feats)
    sel = {k: v[mask] for k, v in fields.items()}
    adv = advance_features(
        layout, layout.empty(1), np.zeros(int(mask.sum()), np.int64), ts[mask], sel
    )
    as_of = int(ts.max())
    expected = read_features(layout, adv.records, np.array([as_of]))
    store = OnlineStore(state)
    got = store.get_features([account], [f.name for f in feats], as_of)[0]
    store.close()
    for f in feats:
        want = float(expected[f.name][0])
        value = got[f.name].value
        if not (value == want or (value is None and want != want)):
            raise AssertionError(f"{f.name} of {account!r}: flow {value}, kernel {want}")


def _cmd(args: argparse.Namespace) -> int:
    figures = run_features_bench(
        events=args.events,
        accounts=args.accounts,
        repeats=args.repeats,
        data_dir=args.data_dir,
        history=not args.no_history,
    )
    if args.json:
        print(orjson.dumps({**figures, "history": not args.no_history}).decode())
        return 0
    print(
        "history store: "
        + (
            "written (the default of `streamml run features`)"
            if not args.no_history
            else "not written (--no-history)"
        )
    )
    base = figures["1 feature"]["events_per_s"]
    for name, f in figures.items():
        print(
            f"{name:<11} {f['events_per_s']:>10,.0f} events/s (min {f['min']:,.0f}, max "
            f"{f['max']:,.0f})  CPU {f['cpu_s']:.1f} s  RSS {f['peak_rss_mib']:.0f} MiB  "
            f"{f['events_per_s'] / base:.0%} of 1 feature"
        )
    return 0


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", type=int, default=2_000_000, help="speed tests in the file")
    p.add_argument("--accounts", type=int, default=100_000, help="distinct accounts")
    p.add_argument("--repeats", type=int, default=3, help="rounds (the two runs take turns)")
    p.add_argument("--data-dir", type=Path, help="where to write the file and state (temp)")
    p.add_argument(
        "--no-history",
        action="store_true",
        help="do not write the history store (written by default, as by `streamml run features`)",
    )
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(func=_cmd)


def register(bench_sub: argparse._SubParsersAction) -> None:
    """Add `features` to the `streamml bench` subcommands."""
    p = bench_sub.add_parser(
        "features",
        help="features flow: five speed-test features from one source vs one, same file",
        description=(__doc__ or "").split("\n\n")[0],
    )
    _add_arguments(p)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from `python -m streamml.benchmarks.features`."""
    parser = argparse.ArgumentParser(prog="python -m streamml.benchmarks.features")
    _add_arguments(parser)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
