"""`streamml predictions`: look into the prediction store (explain a stored prediction)."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from streamml.console import format_table
from streamml.onnx_models import REGISTRY_ENV, RegistryError, default_registry_dir

if TYPE_CHECKING:
    from streamml.operators.explain import Explanation

__all__ = ["DEFAULT_TOLERANCE", "register"]

DEFAULT_TOLERANCE = 1e-6
"""`streamml.operators.explain.DEFAULT_TOLERANCE`, repeated here so that building the parser does
not import the explainer (ONNX Runtime, Bytewax); a test keeps the two equal."""


def _fail(message: str) -> int:
    print(f"streamml predictions explain: error: {message}", file=sys.stderr)
    return 2


def _prob(p: float | None) -> str:
    return "-" if p is None else f"{p:.6f}"


def _variant_text(e: Explanation) -> str:
    head = f"{e.variant} ({e.role}) {e.model}@{e.version}: "
    if e.reproduced:
        head += f"reproduced, {e.detail} (max |dp| {e.max_abs_diff:.3g})"
    else:
        head += f"NOT reproduced: {e.reason}: {e.detail}"
    rescored = e.rescored_probabilities or (None,) * len(e.classes)
    rows: list[list[Any]] = [["label", e.stored_label, e.rescored_label or "-"]]
    rows += [
        [f"p({c})", _prob(s), _prob(r)]
        for c, s, r in zip(e.classes, e.stored_probabilities, rescored, strict=True)
    ]
    return head + "\n" + format_table(rows, ("", "STORED", "RESCORED"))


def _features_text(row: dict[str, Any]) -> str:
    rows = [
        [
            f["name"],
            "null" if f["value"] is None else repr(f["value"]),
            f["status"],
            "-" if f["updated_at"] is None else f["updated_at"],
            f["version"],
        ]
        for f in row["features"]
    ]
    return format_table(rows, ("FEATURE", "VALUE", "STATUS", "UPDATED_AT", "VERSION"))


def _iso(ts: datetime | None) -> str:
    return "-" if ts is None else ts.isoformat()


def _cmd_explain(args: argparse.Namespace) -> int:
    """Re-score every stored variant of one request and print stored vs re-scored."""
    from streamml.operators.explain import explain_request
    from streamml.state.predictions import read_predictions

    if not args.prediction_store.is_dir():
        return _fail(f"prediction store {str(args.prediction_store)!r} is not a directory")
    try:
        found = explain_request(
            args.prediction_store, args.request_id, args.registry, tolerance=args.tolerance
        )
    except (RegistryError, OSError, ValueError) as exc:
        return _fail(str(exc))
    if not found:
        return _fail(f"no stored prediction with request_id {args.request_id!r}")
    ok = all(e.reproduced for e in found)
    if args.json:
        out = {"request_id": args.request_id, "reproduced": ok, "variants": []}
        out["variants"] = [e.to_json() for e in found]
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0 if ok else 1
    rows = read_predictions(args.prediction_store, args.request_id).to_pylist()
    first = next((r for r in rows if r["role"] == "answer"), rows[0])
    print(
        f"request {args.request_id}: model {first['model']}, account {first['account']}, "
        f"requested {_iso(first['request_ts'])}, metadata revision {first['metadata_revision']}, "
        f"pipeline {first['pipeline_version']}"
    )
    print(_features_text(first))
    for e in found:
        print()
        print(_variant_text(e))
    print()
    good = sum(e.reproduced for e in found)
    print(
        f"{good}/{len(found)} variants reproduced (tolerance {args.tolerance:g} per probability; "
        f"onnxruntime {found[0].onnxruntime_version})"
    )
    return 0 if ok else 1


def _add_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "explain",
        help="re-score a stored prediction and compare it with what was stored",
        description=(
            "Re-score every stored variant of REQUEST_ID with its stored feature values and "
            "model version, and print the stored and re-scored results side by side, or why it "
            "cannot be re-scored (version deleted, sha mismatch, contract changed). Exits 0 when "
            "every variant is reproduced, 1 when one is not, 2 on errors."
        ),
    )
    p.add_argument("request_id", metavar="REQUEST_ID")
    p.add_argument(
        "--prediction-store", type=Path, required=True, metavar="DIR", help="prediction store"
    )
    p.add_argument(
        "--registry",
        type=Path,
        default=default_registry_dir(),
        metavar="DIR",
        help=f"model registry directory (default: ${REGISTRY_ENV}, else ./models)",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help="largest absolute difference per probability (default: %(default)g)",
    )
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=_cmd_explain)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `predictions` command and its subcommands to the top-level subparsers `sub`."""
    predictions = sub.add_parser(
        "predictions",
        help="look into stored predictions (explain one)",
        description="Work with the prediction store written by the prediction flow.",
    )
    psub = predictions.add_subparsers(
        dest="predictions_command", metavar="SUBCOMMAND", required=True
    )
    _add_explain(psub)
