"""`streamml serve`: run the REST service; `streamml serve tokens add`: create a bearer token."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from streamml.server.auth import SCOPES, add_token
from streamml.server.config import ServeConfig

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `streamml serve`."""
    p = sub.add_parser(
        "serve",
        help="run the REST service (predictions, features, models)",
        description=(
            "Serve predictions on demand (the prediction flow's code), push prediction requests "
            "to the requests topic, read online features and model metadata over HTTP, with "
            "bearer tokens, rate limits, body limits and deadlines. Binds to 127.0.0.1 by "
            "default; OpenAPI at /openapi.json, interactive docs at /docs."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = ServeConfig.__dataclass_fields__
    p.add_argument("--state-dir", type=Path, help="state dir (online store, on-demand answers)")
    p.add_argument("--registry", type=Path, help="model registry")
    p.add_argument("--telemetry-url", help="base URL of the telemetry on-demand service")
    p.add_argument("--brokers", help="Kafka bootstrap servers HOST:PORT[,...]")
    p.add_argument("--requests-topic", help="topic of prediction requests (with --brokers)")
    p.add_argument("--prediction-store", type=Path, help="default: STATE_DIR/predictions")
    p.add_argument("--tokens", type=Path, help="token file (none: no authentication)")
    p.add_argument("--host", default=d["host"].default, help="address to bind")
    p.add_argument("--port", type=int, default=d["port"].default)
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--http", choices=["uvicorn", "granian"], default=d["http"].default)
    limits = p.add_argument_group("limits")
    limits.add_argument("--deadline-ms", type=int, default=d["deadline_ms"].default)
    limits.add_argument(
        "--fetch-wait-ms",
        type=int,
        default=d["fetch_wait_ms"].default,
        help="wait for on-demand answers, then score with stale answers or defaults",
    )
    limits.add_argument("--max-body-bytes", type=int, default=d["max_body_bytes"].default)
    limits.add_argument(
        "--rate", type=float, default=d["rate_per_s"].default, help="requests/s per token"
    )
    limits.add_argument("--burst", type=int, default=d["burst"].default, help="per token")
    p.set_defaults(func=_cmd_serve)
    tsub = p.add_subparsers(dest="serve_command", metavar="COMMAND")
    tokens = tsub.add_parser("tokens", help="manage bearer tokens")
    ttsub = tokens.add_subparsers(dest="tokens_command", metavar="COMMAND", required=True)
    add = ttsub.add_parser("add", help="create a token (printed once; only its hash is kept)")
    add.add_argument("name", help="who the token is for")
    add.add_argument("--scopes", required=True, help=f"comma-separated, among {', '.join(SCOPES)}")
    add.add_argument("--tokens", type=Path, required=True, dest="token_file", help="token file")
    add.set_defaults(func=_cmd_add_token)


def _cmd_add_token(args: argparse.Namespace) -> int:
    try:
        token = add_token(args.token_file, args.name, args.scopes.split(","))
    except ValueError as exc:
        print(f"streamml serve tokens add: {exc}", file=sys.stderr)
        return 2
    print(token)
    print(f"token {args.name!r} ({args.scopes}) added to {args.token_file}", file=sys.stderr)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from streamml.server.runner import check_paths, serve  # the service's stack, only to run it

    try:
        if args.state_dir is None or args.registry is None:
            raise ValueError("--state-dir and --registry are required")
        config = ServeConfig(
            state_dir=args.state_dir.resolve(),
            registry_dir=args.registry.resolve(),
            telemetry_url=args.telemetry_url,
            brokers=tuple(b for b in (args.brokers or "").split(",") if b),
            requests_topic=args.requests_topic,
            prediction_store=args.prediction_store.resolve() if args.prediction_store else None,
            tokens=args.tokens.resolve() if args.tokens else None,
            host=args.host,
            port=args.port,
            workers=args.workers,
            http=args.http,
            deadline_ms=args.deadline_ms,
            fetch_wait_ms=args.fetch_wait_ms,
            max_body_bytes=args.max_body_bytes,
            rate_per_s=args.rate,
            burst=args.burst,
        )
        if config.tokens is not None and not config.tokens.exists():
            raise ValueError(f"token file {config.tokens} does not exist")
        check_paths(config)
    except ValueError as exc:
        print(f"streamml serve: {exc}", file=sys.stderr)
        return 2
    if config.tokens is None:
        print(
            "streamml serve: no --tokens: every request is allowed (loopback only)", file=sys.stderr
        )
    print(f"streamml serve: http://{config.host}:{config.port} (docs at /docs)", file=sys.stderr)
    serve(config)
    return 0
