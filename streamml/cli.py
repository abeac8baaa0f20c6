"""The `streamml` command: one entry point, one subcommand per concern."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every subcommand registered."""
    from streamml import (
        broker,
        dataset_cli,
        demo,
        features_cli,
        generate_cli,
        models_cli,
        postgres_cli,
        predictions_cli,
        recovery,
        run_cli,
        serve_cli,
        telemetry,
    )
    from streamml.benchmarks import cli as bench_cli

    parser = argparse.ArgumentParser(
        prog="streamml",
        description=(
            "Streaming ML lifecycle: compute features from live streams, keep them in an "
            "online store, score ONNX models and benchmark it all."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo.register(sub)
    run_cli.register(sub)
    features_cli.register(sub)
    dataset_cli.register(sub)
    generate_cli.register(sub)
    models_cli.register(sub)
    predictions_cli.register(sub)
    serve_cli.register(sub)
    broker.register(sub)
    postgres_cli.register(sub)
    telemetry.register(sub)
    recovery.register(sub)
    bench_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
