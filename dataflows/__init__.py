"""Bytewax dataflows; each module exposes `flow` for ``python -m bytewax.run dataflows.MODULE:flow``."""

__all__: list[str] = []
