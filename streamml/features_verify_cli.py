"""`streamml features verify`: the online features of logged predictions against the history."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["add_verify_parser"]

_CATEGORIES = """\
Each distinct logged value of a request is one of: exact (the point-in-time value as of the
request time: what an online read then gives from the events up to then), by lag (the online
read as of the request time of the events up to the logged updated_at: the feature flow was
behind the request, or ahead of it when requests were scored after their events), mismatched
(neither), version mismatch (the definitions or the history lack the logged version) or not
checkable (fetched, defaulted, request context, on-demand answers, features the online store did
not serve). Counts and sums compare exactly (fixed point), other aggregations within a relative
1e-9. Exit status: 0 when no value is mismatched, 1 when some are, 2 on bad arguments.
"""


def add_verify_parser(fsub: argparse._SubParsersAction) -> None:
    """Add `streamml features verify`."""
    p = fsub.add_parser(
        "verify",
        help="recompute the logged online features of predictions from the history store",
        description=(
            "Recompute every online feature value the prediction store logged, from the "
            "history store as of each prediction's request time, and report per feature what "
            "agrees and what does not, with examples. " + _CATEGORIES
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--prediction-store", required=True, type=Path, help="prediction store root")
    p.add_argument("--history", required=True, type=Path, help="history store root")
    p.add_argument(
        "--since", help="first request time: epoch ms or ISO-8601 with an offset (inclusive)"
    )
    p.add_argument("--until", help="last request time, the same way (inclusive)")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--definitions", type=Path, help="feature definition file (default: the bundled one)"
    )
    where.add_argument(
        "--state-dir", type=Path, help="take the definitions from this state dir (its versions)"
    )
    p.add_argument(
        "--examples", type=int, default=5, help="mismatches shown per feature (default: 5)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object instead of tables")
    p.set_defaults(func=_cmd_verify)


def _fail(message: str) -> int:
    print(f"streamml features verify: {message}", file=sys.stderr)
    return 2


def _cmd_verify(args: argparse.Namespace) -> int:
    from streamml.state.definitions import (
        DefinitionError,
        default_definitions,
        load_definitions,
        parse_instant,
    )

    bounds = {}
    for name in ("since", "until"):
        text = getattr(args, name)
        try:
            bounds[name] = None if text is None else parse_instant(text)
        except ValueError as exc:
            return _fail(f"--{name}: {exc}")
    if args.examples < 0:
        return _fail("--examples must be >= 0")
    if not args.prediction_store.is_dir():
        return _fail(f"no prediction store at {args.prediction_store}")
    if not args.history.is_dir():
        return _fail(f"no history store at {args.history}")
    try:
        if args.state_dir is not None:
            from streamml.state.feature_manifest import read_sources

            known = {f.name: f for s in read_sources(args.state_dir).values() for f in s.features}
            if not known:
                return _fail(f"{args.state_dir} holds no feature state")
        else:
            defs = load_definitions(args.definitions) if args.definitions else default_definitions()
            known = dict(defs.features)
    except DefinitionError as exc:
        return _fail(str(exc))
    from streamml.state.consistency import verify_predictions

    started = time.perf_counter()
    report = verify_predictions(
        args.prediction_store,
        args.history,
        known,
        since=bounds["since"],
        until=bounds["until"],
        examples=args.examples,
    )
    took = time.perf_counter() - started
    if args.json:
        import orjson

        body = report.to_json()
        body["seconds"] = round(took, 3)
        sys.stdout.write(orjson.dumps(body).decode() + "\n")
    else:
        _print_report(report, args, took)
    return 1 if report.mismatched else 0


def _print_report(report, args: argparse.Namespace, took: float) -> None:
    from streamml.console import format_table, human

    print(
        f"{human(report.predictions)} predictions ({human(report.requests)} requests) in "
        f"{args.prediction_store}, recomputed from {args.history} in {took:.1f} s"
    )
    if not report.predictions:
        print("no predictions to verify (none stored, or none in --since/--until)")
        return
    rows = []
    for c in report.features.values():
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(c.not_checkable.items()))
        rows.append(
            (
                c.feature,
                c.definition or "-",
                c.logged,
                c.checked,
                c.exact,
                c.lagged,
                c.mismatched,
                c.version_mismatch,
                sum(c.not_checkable.values()),
                reasons,
            )
        )
    headers = [
        "feature",
        "definition",
        "logged",
        "checked",
        "exact",
        "by lag",
        "mismatched",
        "version mismatch",
        "not checkable",
        "why not",
    ]
    print(format_table(rows, headers=headers))
    unknown = {c.feature: sorted(c.unknown_versions) for c in report.features.values()}
    for feature, versions in unknown.items():
        if versions:
            print(f"{feature}: logged versions the definitions or history lack: {versions}")
    examples = [m for c in report.features.values() for m in c.examples]
    if examples:
        print(f"\nmismatches (up to {args.examples} per feature):")
        print(
            format_table(
                [
                    (
                        m.request_id,
                        m.account,
                        m.request_ts,
                        m.feature,
                        m.status,
                        _num(m.logged),
                        _num(m.recomputed),
                        _num(m.as_applied),
                        "-" if m.updated_at is None else m.updated_at,
                    )
                    for m in examples
                ],
                headers=[
                    "request",
                    "account",
                    "request ts",
                    "feature",
                    "status",
                    "logged",
                    "recomputed",
                    "as applied",
                    "updated_at",
                ],
            )
        )
    exact = sum(c.exact for c in report.features.values())
    lagged = sum(c.lagged for c in report.features.values())
    print(
        f"{human(report.mismatched)} mismatched of {human(report.checked)} values checked "
        f"({human(exact)} exact, {human(lagged)} explained by the feature flow's position); "
        f"{human(report.version_mismatch)} with a version the definitions or history lack"
    )


def _num(value: float | None) -> str:
    if value is None:
        return "null"
    return str(int(value)) if float(value).is_integer() else f"{value:.9g}"
