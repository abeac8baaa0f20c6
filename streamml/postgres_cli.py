"""`streamml postgres start`: a local PostgreSQL server in the foreground, until Ctrl-C.

Parses arguments and prints; the server is `streamml.state.postgres_server.start_postgres`.
"""

from __future__ import annotations

import argparse
import sys
import time

__all__ = ["register"]


def _start(args: argparse.Namespace) -> int:
    from streamml.state.postgres_server import PostgresServerError, start_postgres

    try:
        server = start_postgres(args.data_dir, port=args.port, host=args.host, run_as=args.run_as)
    except PostgresServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    with server:
        where = server.data_dir if args.data_dir else f"{server.data_dir} (temporary)"
        print(f"PostgreSQL ready at {server.dsn}")
        print(f"  data dir {where}; pid {server.pid}; log {server.log_path}")
        print(f"  in Python: PostgresStore({server.dsn!r}, 'signal_errors')")
        print("  Ctrl-C stops it.", flush=True)
        try:
            while server.running():
                time.sleep(0.5)
        except KeyboardInterrupt:
            print("\nstopping PostgreSQL", file=sys.stderr)
            return 0
        print(f"PostgreSQL exited:\n{server.log_tail()}", file=sys.stderr)
        return 1


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `streamml postgres start` to the top-level `streamml` subparsers."""
    p = sub.add_parser(
        "postgres",
        help="run a local PostgreSQL server (pgserver's binaries) for the PostgreSQL online store",
        description="Run a local PostgreSQL server, listening on a loopback port only.",
    )
    psub = p.add_subparsers(dest="postgres_command", metavar="ACTION", required=True)
    start = psub.add_parser(
        "start",
        help="start a server in the foreground until Ctrl-C",
        description=(
            "Start PostgreSQL 16 (from the pgserver wheel) on HOST:PORT with trust authentication "
            "(a development server) and print its DSN. The data dir is created (initdb) when it "
            "holds no cluster and kept; without --data-dir a temporary one is removed on exit."
        ),
    )
    start.add_argument("--data-dir", default=None, help="cluster directory (default: temporary)")
    start.add_argument("--port", type=int, default=5432, help="TCP port (default 5432)")
    start.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default loopback)"
    )
    start.add_argument(
        "--run-as",
        default=None,
        help="unprivileged user the server runs as when started by root (default nobody)",
    )
    start.set_defaults(func=_start)
