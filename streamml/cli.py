"""The `streamml` command: one entry point, one subcommand per concern.

Only the module of the chosen command is imported (see `streamml.commands`), so `--help` and
quick commands such as `streamml features get` start without loading Bytewax, ONNX Runtime or
the Kafka client.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from streamml.commands import Command, add_commands, command_path

__all__ = ["COMMANDS", "build_parser", "main"]

COMMANDS: tuple[Command, ...] = (
    Command("demo", "run the main job on generated data", "streamml.demo"),
    Command("run", "run a flow (error-count, predict, features, outcomes)", "streamml.run_cli"),
    Command(
        "features", "feature definitions and the online feature store", "streamml.features_cli"
    ),
    Command("dataset", "training sets from the history store", "streamml.dataset_cli"),
    Command("generate", "write a seeded signal-error stream to files", "streamml.generate_cli"),
    Command(
        "models",
        "train, register, list, show, promote and route ONNX models",
        "streamml.models_cli",
    ),
    Command(
        "predictions", "look into stored predictions (explain one)", "streamml.predictions_cli"
    ),
    Command(
        "monitor",
        "live model performance per version and variant (compute, show)",
        "streamml.monitor_cli",
    ),
    Command("serve", "run the REST service (predictions, features, models)", "streamml.serve_cli"),
    Command(
        "broker",
        "run a local Kafka-compatible broker (tansu, in-memory) in the foreground",
        "streamml.broker",
    ),
    Command(
        "postgres",
        "run a local PostgreSQL server (pgserver's binaries) for the PostgreSQL online store",
        "streamml.postgres_cli",
    ),
    Command(
        "telemetry",
        "run the stand-in device-telemetry service (HTTP) the prediction flow calls",
        "streamml.telemetry",
    ),
    Command("recovery", "manage Bytewax recovery directories", "streamml.recovery"),
    Command(
        "deploy",
        "render the Kubernetes manifests (a StatefulSet of flow processes)",
        "streamml.deploy_cli",
    ),
    Command("bench", "run a benchmark", "streamml.benchmarks.cli", nested=True),
)
"""Every subcommand, in the order `streamml --help` lists them."""


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """Build the argument parser for `argv`: only its command fully (every one when None)."""
    parser = argparse.ArgumentParser(
        prog="streamml",
        description=(
            "Streaming ML lifecycle: compute features from live streams, keep them in an "
            "online store, score ONNX models and benchmark it all."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_commands(sub, COMMANDS, None if argv is None else command_path(argv))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
