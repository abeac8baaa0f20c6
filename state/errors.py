"""Errors that stop a run before it writes anything, with a message that says what to do."""

from __future__ import annotations

__all__ = ["RefusedError"]


class RefusedError(RuntimeError):
    """A run was refused before anything was written: its inputs, state and outputs disagree.

    The message names both sides of the disagreement and the command that resolves it.
    """
