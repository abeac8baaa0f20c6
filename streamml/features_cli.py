"""`streamml features`: the feature definitions, and feature values from the online store."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from streamml.console import format_table
from streamml.state.definitions import (
    DefinitionError,
    Definitions,
    EntityDef,
    default_definitions,
    load_definitions,
    parse_instant,
)

__all__ = ["register"]

_DEFS_HELP = "feature definition file (TOML; default: the bundled one, see `features show`)"


def register(sub: argparse._SubParsersAction) -> None:
    """Add `streamml features`."""
    features = sub.add_parser(
        "features",
        help="feature definitions and the online feature store",
        description=(
            "List, show and validate feature definitions; read the online store; verify logged "
            "predictions against the history store."
        ),
    )
    fsub = features.add_subparsers(dest="features_command", metavar="COMMAND", required=True)
    get = fsub.add_parser(
        "get",
        help="current feature values of accounts, with their freshness",
        description=(
            "Print each account's features as of --as-of (default now): windowed values over "
            "the window ending then, so they decay with no new events. Each value comes with "
            "its update time (event time of the last accepted event), its definition version "
            "and its status: fresh (updated within the feature's TTL), stale, or missing (never "
            "seen). Safe to run while a flow writes the store."
        ),
    )
    get.add_argument("accounts", nargs="+", metavar="ACCOUNT")
    get.add_argument("--state-dir", required=True, type=Path, help="state dir of the flow")
    get.add_argument(
        "--features", help="comma-separated feature names (default: every feature of the store)"
    )
    get.add_argument(
        "--as-of",
        help="epoch milliseconds or ISO-8601 with an offset, e.g. 2026-11-29T12:00:00Z "
        "(default: now)",
    )
    get.add_argument("--json", action="store_true", help="one JSON object per line")
    get.set_defaults(func=_cmd_get)

    from streamml import features_run_cli, features_verify_cli

    features_run_cli.add_backfill_parser(fsub)
    features_verify_cli.add_verify_parser(fsub)
    for name, helptext, func in (
        ("list", "one line per feature: source, aggregation, window, TTL, stores", _cmd_list),
        ("show", "every field of the definitions, with each feature's version", _cmd_show),
        ("validate", "check a definition file; exit 1 naming the first error", _cmd_validate),
    ):
        p = fsub.add_parser(name, help=helptext, description=helptext[0].upper() + helptext[1:])
        where = p.add_mutually_exclusive_group() if name != "validate" else p
        where.add_argument("--definitions", type=Path, help=_DEFS_HELP)
        if name != "validate":
            where.add_argument(
                "--state-dir",
                type=Path,
                help="the definitions a state dir holds (its sources and feature versions)",
            )
        if name == "show":
            p.add_argument("names", nargs="*", metavar="FEATURE", help="features (default: all)")
            p.add_argument("--json", action="store_true", help="JSON instead of text")
        p.set_defaults(func=func)


def _load(args: argparse.Namespace, command: str) -> Definitions | None:
    state_dir = getattr(args, "state_dir", None)
    if state_dir is not None:
        from streamml.state.feature_manifest import read_sources

        sources = read_sources(state_dir)
        if not sources:
            print(
                f"streamml features {command}: {state_dir} holds no feature state", file=sys.stderr
            )
            return None
        features = {f.name: f for s in sources.values() for f in s.features}
        entities = {f.entity: EntityDef(f.entity) for f in features.values()}
        return Definitions(
            entities, {n: s.source for n, s in sources.items()}, features, str(state_dir)
        )
    try:
        if args.definitions is None:
            return default_definitions()
        return load_definitions(args.definitions)
    except DefinitionError as exc:
        print(f"streamml features {command}: {exc}", file=sys.stderr)
        return None


def _cmd_list(args: argparse.Namespace) -> int:
    defs = _load(args, "list")
    if defs is None:
        return 1
    rows = []
    for f in defs.features.values():
        j = f.to_json()
        agg = f.aggregation if f.field is None else f"{f.aggregation}({f.field})"
        rows.append(
            (
                f.name,
                f.entity,
                f.source.name,
                agg,
                j["window"],
                j["bucket"],
                j["ttl"],
                ",".join(f.online),
                f.version,
            )
        )
    headers = [
        "feature",
        "entity",
        "source",
        "aggregation",
        "window",
        "bucket",
        "ttl",
        "online",
        "version",
    ]
    print(format_table(rows, headers=headers))
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    defs = _load(args, "show")
    if defs is None:
        return 1
    try:
        chosen = defs.select(args.names or None)
    except KeyError as exc:
        print(f"streamml features show: {exc.args[0]}", file=sys.stderr)
        return 2
    if args.json:
        for f in chosen:
            sys.stdout.write(orjson.dumps(f.to_json()).decode() + "\n")
        return 0
    print(f"# {defs.path}")
    for f in chosen:
        print(f"\n{f.name}  (version {f.version})")
        for key, value in f.to_json().items():
            if key not in ("name", "version"):
                print(f"  {key:<12} {value}")
        src = f.source
        print(
            f"  {'reads':<12} {src.kind} {src.format}: key={src.key}, time={src.time} "
            f"({src.time_format})" + (f", filters={dict(src.filters)}" if src.filters else "")
        )
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    defs = _load(args, "validate")
    if defs is None:
        return 1
    print(
        f"{defs.path}: valid: {len(defs.entities)} entities, {len(defs.sources)} sources, "
        f"{len(defs.features)} features"
    )
    return 0


def _cmd_get(args: argparse.Namespace) -> int:
    from streamml.state.online import OnlineStore

    as_of = None
    if args.as_of is not None:
        try:
            as_of = parse_instant(args.as_of)
        except ValueError as exc:
            print(f"streamml features get: --as-of: {exc}", file=sys.stderr)
            return 2
    try:
        store = OnlineStore(args.state_dir)
    except FileNotFoundError as exc:
        print(f"streamml features get: {exc}", file=sys.stderr)
        return 2
    names = None
    if args.features:
        names = [n.strip() for n in args.features.split(",") if n.strip()]
    try:
        reads = store.get_features(args.accounts, names, as_of)
    except KeyError as exc:
        print(f"streamml features get: {exc.args[0]}", file=sys.stderr)
        return 2
    finally:
        store.close()
    if args.json:
        for account, features in zip(args.accounts, reads, strict=True):
            body = {"account": account, "features": {k: v.to_json() for k, v in features.items()}}
            sys.stdout.write(orjson.dumps(body).decode() + "\n")
        return 0
    rows = []
    for account, features in zip(args.accounts, reads, strict=True):
        for name, r in features.items():
            value = "-" if r.value is None else _number(r.value)
            updated = "-" if r.updated_at is None else r.updated_at
            rows.append((account, name, value, r.status, updated, r.version))
    headers = ["account", "feature", "value", "status", "updated_at (ms)", "version"]
    print(format_table(rows, headers=headers))
    return 0


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.6g}"
