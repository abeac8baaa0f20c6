"""Terminal output: a progress line that redraws itself on a terminal, and plain tables."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

__all__ = ["Progress", "format_table", "human"]


def human(n: float) -> str:
    """Format a count with thousands separators, or one decimal below 1000 for fractions."""
    if isinstance(n, float) and abs(n) < 1000 and not n.is_integer():
        return f"{n:,.1f}"
    return f"{round(n):,}"


def format_table(rows: Sequence[Sequence[object]], headers: Sequence[str] | None = None) -> str:
    """Return rows as an aligned text table; numbers are right-aligned."""
    cells = [[str(c) for c in r] for r in rows]
    if headers:
        cells.insert(0, list(headers))
    if not cells:
        return ""
    widths = [max(len(r[i]) for r in cells if i < len(r)) for i in range(len(cells[0]))]
    numeric = [
        all(_is_num(r[i]) for r in cells[1 if headers else 0 :] if i < len(r))
        for i in range(len(widths))
    ]
    lines = []
    for k, r in enumerate(cells):
        parts = [c.rjust(widths[i]) if numeric[i] else c.ljust(widths[i]) for i, c in enumerate(r)]
        lines.append("  ".join(parts).rstrip())
        if headers and k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _is_num(s: str) -> bool:
    t = s.replace(",", "").replace(".", "", 1).replace("%", "").replace("x", "").strip()
    return t.lstrip("-").isdigit()


class Progress:
    """One status line, redrawn in place on a terminal and silent otherwise."""

    def __init__(self, stream: TextIO | None = None, enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self._width = 0

    def update(self, text: str) -> None:
        """Replace the status line with `text`."""
        if not self.enabled:
            return
        pad = max(0, self._width - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._width = len(text)

    def done(self) -> None:
        """Clear the status line."""
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0
