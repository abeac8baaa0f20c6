"""`streamml features`: read feature values from the online store."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from streamml.console import format_table

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add `streamml features`."""
    features = sub.add_parser(
        "features", help="read the online feature store", description="Read the online store."
    )
    fsub = features.add_subparsers(dest="features_command", metavar="COMMAND", required=True)
    get = fsub.add_parser(
        "get",
        help="current feature values of accounts",
        description=(
            "Print each account's features as of --as-of (epoch ms, default now): values are "
            "summed over the window ending then, so they decay with no new events. Unknown "
            "accounts have value 0 and no update time. Safe to run while a flow writes the store."
        ),
    )
    get.add_argument("accounts", nargs="+", metavar="ACCOUNT")
    get.add_argument("--state-dir", required=True, type=Path, help="state dir of the flow")
    get.add_argument("--as-of", type=int, help="epoch milliseconds (default: now)")
    get.add_argument("--json", action="store_true", help="one JSON object per line")
    get.set_defaults(func=_cmd_get)


def _cmd_get(args: argparse.Namespace) -> int:
    if args.as_of is not None and args.as_of < 0:
        print("streamml features get: --as-of must be >= 0 (epoch ms)", file=sys.stderr)
        return 2
    from streamml.state.online import OnlineStore  # here, so `--help` does not load the store

    try:
        store = OnlineStore(args.state_dir)
    except FileNotFoundError as exc:
        print(f"streamml features get: {exc}", file=sys.stderr)
        return 2
    try:
        values = store.get_many(args.accounts, args.as_of)
    finally:
        store.close()
    name = store.feature
    if args.json:
        for account, v in zip(args.accounts, values, strict=True):
            body = {
                "account": account,
                "features": {name: {"value": v.value, "updated_at": v.updated_at}},
            }
            sys.stdout.write(orjson.dumps(body).decode() + "\n")
        return 0
    rows = [
        (a, v.value, "-" if v.updated_at is None else v.updated_at)
        for a, v in zip(args.accounts, values, strict=True)
    ]
    print(format_table(rows, headers=["account", name, "updated_at (ms)"]))
    return 0
