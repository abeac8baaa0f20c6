"""`streamml bench`: benchmarks, run from the CLI and never part of the test suite."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from streamml.commands import Command, add_commands

__all__ = ["BENCHMARKS", "register"]

BENCHMARKS: tuple[Command, ...] = (
    Command(
        "error-count",
        "events/s, CPU and peak RSS of the error-count flow on a CSV file or a Kafka topic",
        "streamml.benchmarks.error_count",
    ),
    Command(
        "kafka",
        "error-count flow on each Kafka client vs a bare consumer of each, same topic",
        "streamml.benchmarks.kafka_clients",
    ),
    Command(
        "kafka-soak",
        "RSS of the Kafka error-count flow at 10%%, 50%% and 100%% of a long run",
        "streamml.benchmarks.kafka_soak",
    ),
    Command(
        "scoring",
        "scoring operator in a dataflow vs bare ONNX Runtime, and single-row latency",
        "streamml.benchmarks.scoring",
    ),
    Command(
        "predict",
        "prediction flow: happy-path requests/s; with --kafka, open-loop latency",
        "streamml.benchmarks.predict",
    ),
    Command(
        "aggregations",
        "aggregation kernel: one count vs five speed-test features in one pass",
        "streamml.benchmarks.aggregations",
    ),
    Command(
        "online-reads",
        "get_features latency: 1 and 100 entities x 10 features, in process",
        "streamml.benchmarks.online_reads",
    ),
    Command(
        "features",
        "features flow: five speed-test features from one source vs one, same file",
        "streamml.benchmarks.features",
    ),
    Command(
        "online-stores",
        "ingest rows/s and read p50/p99 of PostgreSQL and RocksDB online stores",
        "streamml.benchmarks.postgres_store",
    ),
    Command(
        "serve",
        "REST service: open-loop latency of features and predictions",
        "streamml.benchmarks.serve",
    ),
    Command(
        "training-set",
        "point-in-time training set: 1M spine rows x 10 features from the history store",
        "streamml.benchmarks.training_sets",
    ),
    Command(
        "outcomes",
        "outcome join: outcomes/s and memory with many pending predictions",
        "streamml.benchmarks.outcomes",
    ),
    Command(
        "monitor",
        "live performance metrics: 1M predictions + 900k outcomes, cost per prediction",
        "streamml.benchmarks.monitor",
    ),
)
"""Every benchmark, in the order `streamml bench --help` lists them."""


def register(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    path: Sequence[str] | None = None,
) -> None:
    """Add `streamml bench`: fully the benchmark `path` names (every one when None)."""
    bench = sub.add_parser(
        "bench", help="run a benchmark", description="Run a benchmark and print its figures."
    )
    bsub = bench.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    add_commands(bsub, BENCHMARKS, path)
