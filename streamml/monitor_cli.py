"""`streamml monitor`: live model performance (compute the metrics table, show it)."""

from __future__ import annotations

import argparse
import os
import sys
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from streamml.console import Progress, format_table, human
from streamml.onnx_models import REGISTRY_ENV, default_registry_dir

__all__ = ["METRICS_ENV", "TRENDS", "register", "sparkline"]

METRICS_ENV = "STREAMML_METRICS"
"""Environment variable naming the metrics folder `streamml monitor show` reads."""
TRENDS = (
    ("accuracy", "accuracy"),
    ("estimated_accuracy", "estimated accuracy"),
    ("log_loss", "log loss"),
    ("ece", "ECE"),
    ("predictions", "predictions"),
)
"""Metrics shown as trends, with their labels."""
_BLOCKS = "▁▂▃▄▅▆▇█"
_WINDOW_COUNTS = {"hour": 24, "day": 14}


def sparkline(values: list[float | None]) -> str:
    """Return one block per value, scaled between the smallest and largest (blank for None)."""
    present = [v for v in values if v is not None]
    if not present:
        return " " * len(values)
    low, high = min(present), max(present)
    span = high - low
    top = len(_BLOCKS) - 1
    return "".join(
        " " if v is None else _BLOCKS[top // 2 if span == 0 else round((v - low) / span * top)]
        for v in values
    )


def _fail(command: str, message: str) -> int:
    print(f"streamml monitor {command}: error: {message}", file=sys.stderr)
    return 2


def _cmd_compute(args: argparse.Namespace) -> int:
    """Compute the metrics table from the prediction and outcome stores."""
    from streamml.operators.monitoring_store import compute_store_metrics

    if not args.prediction_store.is_dir():
        return _fail(
            "compute", f"prediction store {str(args.prediction_store)!r} is not a directory"
        )
    progress = Progress()
    progress.update(f"reading {args.prediction_store} and computing metrics ...")
    try:
        run = compute_store_metrics(args.prediction_store, args.registry, args.out, full=args.full)
    except (OSError, ValueError) as exc:
        progress.done()
        return _fail("compute", str(exc))
    progress.done()
    rows = [
        ["days in the stores", human(run.days)],
        ["days computed (files changed)", human(run.days_computed)],
        ["predictions read", human(run.predictions)],
        ["outcomes read", human(run.outcomes)],
        ["model/version/variant groups", human(run.groups)],
        ["metric rows written", human(run.rows)],
        ["read s", f"{run.read_s:.2f}"],
        ["compute s", f"{run.compute_s:.2f}"],
        ["write s", f"{run.write_s:.2f}"],
        [
            "us per prediction read",
            f"{run.seconds / run.predictions * 1e6:.2f}" if run.predictions else "-",
        ],
    ]
    print(format_table(rows, ("", "VALUE")))
    print(f"wrote {run.path}")
    return 0


def _metrics_dir(args: argparse.Namespace) -> Path:
    if args.metrics is not None:
        return args.metrics
    if args.prediction_store is not None:
        return args.prediction_store / "metrics"
    return Path(os.environ.get(METRICS_ENV) or "metrics")


def _iso(ms: int | None) -> str:
    if ms is None:
        return "cumulative"
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%MZ")


def _num(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _ms(ts: Any) -> int | None:
    return None if ts is None else int(ts.timestamp() * 1000)


def _report(rows: list[dict[str, Any]], window: str, last: int) -> list[dict[str, Any]]:
    """Group the selected metric rows into one report per (version, variant)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["version"], r["variant"])].append(r)
    reports = []
    for (version, variant), items in sorted(groups.items()):
        plain: dict[int | None, dict[str, float | None]] = defaultdict(dict)
        psi: dict[str, dict[int | None, float | None]] = defaultdict(dict)
        mix: dict[str, float | None] = {}
        freshness: dict[str, float | None] = {}
        for r in items:
            start = _ms(r["window_start"]) if r["window"] != "all" else None
            m = r["metric"]
            if m == "psi":
                psi[r["feature"]][start] = r["value"]
            elif start is None and m == "class_share":
                mix[r["class"]] = r["value"]
            elif start is None and m == "freshness" and r["feature"] is None:
                freshness[r["status"]] = r["value"]
            elif r["class"] is None and r["feature"] is None and r["status"] is None:
                plain[start][m] = r["value"]
        starts = sorted(s for s in plain if s is not None)[-last:]
        drift = [
            {
                "feature": f,
                "last": by.get(starts[-1]) if starts else None,
                "cumulative": by.get(None),
                "trend": [by.get(s) for s in starts],
            }
            for f, by in psi.items()
        ]
        drift.sort(key=lambda d: -(d["last"] if d["last"] is not None else -1.0))
        reports.append(
            {
                "version": version,
                "variant": variant,
                "window": window,
                "cumulative": plain.get(None, {}),
                "windows": [{"start": _iso(s), **plain[s]} for s in starts],
                "drift": drift if psi else None,
                "class_mix": mix,
                "freshness": freshness,
            }
        )
    return reports


def _print_report(model: str, rep: dict[str, Any], top: int) -> None:
    cum, windows = rep["cumulative"], rep["windows"]
    print(f"{model} version {rep['version']} variant {rep['variant']}")
    est, acc = cum.get("estimated_accuracy"), cum.get("accuracy")
    print(
        f"cumulative: {human(cum.get('predictions') or 0)} predictions, "
        f"{human(cum.get('outcomes') or 0)} outcomes; accuracy {_num(acc)}, estimated "
        f"{_num(est)} (error {_num(cum.get('estimation_error_accuracy'), 4)}), log loss "
        f"{_num(cum.get('log_loss'))}, ECE {_num(cum.get('ece'))}"
    )
    span = f"{windows[0]['start']} .. {windows[-1]['start']}" if windows else "none"
    print(f"{rep['window']} windows: {len(windows)} shown ({span})")
    trend_rows = []
    for metric, label in TRENDS:
        series = [w.get(metric) for w in windows]
        last = next((v for v in reversed(series) if v is not None), None)
        fmt = (lambda v: "-" if v is None else human(v)) if metric == "predictions" else _num
        trend_rows.append([label, sparkline(series) or "-", fmt(last), fmt(cum.get(metric))])
    print(format_table(trend_rows, ("TREND", "OLDEST -> NEWEST", "LATEST", "CUMULATIVE")))
    print()
    table = [
        [
            w["start"],
            human(w.get("predictions") or 0),
            human(w.get("outcomes") or 0),
            _num(w.get("accuracy")),
            _num(w.get("estimated_accuracy")),
            _num(w.get("estimation_error_accuracy"), 4),
            _num(w.get("log_loss")),
            _num(w.get("ece")),
        ]
        for w in windows[-12:]
    ]
    headers = ("WINDOW", "PREDICTIONS", "OUTCOMES", "ACCURACY", "ESTIMATED", "EST-REAL", "LOG LOSS")
    print(format_table(table, (*headers, "ECE")))
    print()
    if rep["drift"] is None:
        print("drift: unavailable (this version has no training reference)")
    else:
        rows = [
            [d["feature"], sparkline(d["trend"]), _num(d["last"]), _num(d["cumulative"])]
            for d in rep["drift"][:top]
        ]
        print(format_table(rows, ("TOP DRIFTING FEATURE (PSI)", "TREND", "LATEST", "CUMULATIVE")))
    mix = ", ".join(f"{c} {v:.1%}" for c, v in rep["class_mix"].items() if v is not None)
    fresh = ", ".join(f"{s} {v:.1%}" for s, v in rep["freshness"].items() if v is not None)
    print(f"class mix: {mix or '-'}")
    print(f"feature freshness: {fresh or '-'}")


def _cmd_show(args: argparse.Namespace) -> int:
    """Show one model's metrics per version and variant, with trends."""
    import pyarrow.compute as pc

    from streamml.operators.monitoring_store import read_metrics

    try:
        table = read_metrics(_metrics_dir(args))
    except (OSError, ValueError) as exc:
        return _fail("show", str(exc))
    keep = (pc.field("model") == args.model) & pc.field("window").isin([args.window, "all"])
    if args.version is not None:
        keep &= pc.field("version") == args.version
    if args.variant is not None:
        keep &= pc.field("variant") == args.variant
    rows = table.filter(keep).to_pylist()
    if not rows:
        return _fail("show", f"no metrics for model {args.model!r} with these filters")
    last = args.last or _WINDOW_COUNTS[args.window]
    reports = _report(rows, args.window, last)
    if args.json:
        out = {"model": args.model, "window": args.window, "variants": reports}
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    for i, rep in enumerate(reports):
        if i:
            print()
        _print_report(args.model, rep, args.top)
    return 0


def _add_compute(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compute",
        help="compute the metrics table from the prediction and outcome stores",
        description=(
            "Read the prediction store and the outcome store beside it, compute every metric per "
            "model, version and variant over hour, day and cumulative windows (request time), "
            "and write the metrics table (Parquet, replaced atomically). Only the days whose "
            "files changed since the last run into the same folder are computed again."
        ),
    )
    p.add_argument(
        "--prediction-store", type=Path, required=True, metavar="DIR", help="prediction store"
    )
    p.add_argument(
        "--registry",
        type=Path,
        default=default_registry_dir(),
        metavar="DIR",
        help=f"model registry, for training references (default: ${REGISTRY_ENV}, else ./models)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder of the metrics table (default: PREDICTION_STORE/metrics)",
    )
    p.add_argument("--full", action="store_true", help="compute every day again")
    p.set_defaults(func=_cmd_compute)


def _add_show(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "show",
        help="show a model's live performance per version and variant, with trends",
        description=(
            "Print a model's metrics per version and variant from the metrics table: cumulative "
            "figures, trends of accuracy, estimated accuracy, log loss and ECE over the last "
            "windows, the top drifting features, class mix and feature freshness."
        ),
    )
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--version", default=None, help="only this version")
    p.add_argument("--variant", default=None, help="only this variant")
    p.add_argument("--window", choices=("hour", "day"), default="hour", help="window (hour)")
    p.add_argument("--last", type=int, default=None, help="windows shown (24 hours, 14 days)")
    p.add_argument("--top", type=int, default=5, help="drifting features shown (default: 5)")
    p.add_argument(
        "--metrics",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"metrics folder (default: PREDICTION_STORE/metrics, else ${METRICS_ENV}, "
        "else ./metrics)",
    )
    p.add_argument(
        "--prediction-store", type=Path, default=None, metavar="DIR", help="prediction store"
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=_cmd_show)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `monitor` command and its subcommands to the top-level subparsers `sub`."""
    monitor = sub.add_parser(
        "monitor",
        help="live model performance per version and variant (compute, show)",
        description="Monitor models on live data: realised, estimated, drift and freshness.",
    )
    msub = monitor.add_subparsers(dest="monitor_command", metavar="SUBCOMMAND", required=True)
    _add_compute(msub)
    _add_show(msub)
