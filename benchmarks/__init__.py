"""Benchmarks run from ``streamml bench``; never part of the test suite."""

__all__: list[str] = []
