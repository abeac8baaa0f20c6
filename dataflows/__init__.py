"""Bytewax dataflows: each module exposes `flow` for ``python -m bytewax.run``."""

__all__: list[str] = []
