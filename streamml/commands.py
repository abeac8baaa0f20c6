"""Subcommands registered lazily: only the module of the command being run is imported.

A command line names its command first (`streamml features get ...`), so the parser needs the
full definition of that one command only; every other command is added as a placeholder that
carries its one-line help, which is all `streamml --help` shows of it. The command's module, and
whatever its own imports load (Bytewax, ONNX Runtime, pyarrow, ...), is imported only when that
command is chosen. `tests/streamml/test_cli.py` checks that the placeholders' help equals what
the modules register.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Command", "add_commands", "command_path"]


@dataclass(frozen=True, slots=True)
class Command:
    """A subcommand: its name, its one-line help and the module whose `register(sub)` adds it.

    `function` names another registering function of the module. With `nested`, it also
    receives the words after the command's name (see `command_path`), so it can register its
    own subcommands lazily with `add_commands`.
    """

    name: str
    help: str
    module: str
    nested: bool = False
    function: str = "register"


def command_path(argv: Sequence[str]) -> list[str]:
    """Return the leading words of `argv` before its first option: the chosen (sub)commands.

    Positional arguments of the command itself follow (`features get ACCOUNT`): they are
    returned too and ignored, as no command has a subcommand named like them.
    """
    path = []
    for word in argv:
        if word.startswith("-"):
            break
        path.append(word)
    return path


def add_commands(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    commands: Sequence[Command],
    path: Sequence[str] | None,
) -> None:
    """Add `commands` to `sub`: fully the one `path` chooses, the others as placeholders.

    `path=None` adds every command fully (slow: imports every module), for tools that walk the
    whole parser.
    """
    chosen = None if path is None else (path[0] if path else "")
    for command in commands:
        if chosen is not None and command.name != chosen:
            sub.add_parser(command.name, help=command.help)
            continue
        register = getattr(importlib.import_module(command.module), command.function)
        if command.nested:
            register(sub, None if path is None else path[1:])
        else:
            register(sub)
