"""`streamml bench`: benchmarks, run from the CLI and never part of the test suite."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add `streamml bench` and every benchmark."""
    from streamml.benchmarks import (
        aggregations,
        error_count,
        features,
        online_reads,
        postgres_store,
        predict,
        scoring,
        serve,
        training_sets,
    )

    bench = sub.add_parser(
        "bench", help="run a benchmark", description="Run a benchmark and print its figures."
    )
    bsub = bench.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    error_count.register(bsub)
    scoring.register(bsub)
    predict.register(bsub)
    aggregations.register(bsub)
    online_reads.register(bsub)
    features.register(bsub)
    training_sets.register(bsub)
    postgres_store.register(bsub)
    serve.register(bsub)
