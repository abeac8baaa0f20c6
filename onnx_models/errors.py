"""Errors of the model registry, shared by the registry and its routing."""

from __future__ import annotations

__all__ = ["ModelNotFoundError", "RegistryError", "UnsafeModelError"]


class RegistryError(Exception):
    """A registry operation cannot be done as asked."""


class ModelNotFoundError(RegistryError, KeyError):
    """No such model name or version in the registry."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnsafeModelError(RegistryError):
    """A model file failed a safety check (location, type or content hash) and was not loaded."""
