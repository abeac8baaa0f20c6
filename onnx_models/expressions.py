"""JMESPath expressions that pick one number out of a JSON document.

Feature sources name their values with JMESPath (`min(devices[].rssi_dbm)`, `modem.uptime_h`):
`compile_expression` compiles one and also refuses unknown functions and wrong argument counts,
which `jmespath.compile` leaves to search time; `number_at` evaluates it and keeps only finite
numbers. Nothing is ever passed to `eval`.
"""

from __future__ import annotations

import math
from typing import Any

import jmespath
import jmespath.exceptions
import jmespath.functions
import jmespath.parser

__all__ = ["ExpressionError", "compile_expression", "number_at"]

_FUNCTIONS = jmespath.functions.Functions().FUNCTION_TABLE


class ExpressionError(ValueError):
    """A JMESPath expression is empty, does not parse or calls a function wrongly."""


def _check_functions(node: Any) -> None:
    if not isinstance(node, dict):
        return
    if node.get("type") == "function_expression":
        name = node.get("value")
        entry = _FUNCTIONS.get(name)
        if entry is None:
            raise ExpressionError(f"unknown JMESPath function {name}()")
        signature = entry["signature"]
        n_args = len(node.get("children", ()))
        variadic = bool(signature) and signature[-1].get("variadic", False)
        if n_args < len(signature) or (not variadic and n_args > len(signature)):
            expected = f"at least {len(signature)}" if variadic else str(len(signature))
            raise ExpressionError(f"{name}() takes {expected} arguments, got {n_args}")
    for child in node.get("children", ()):
        _check_functions(child)


def compile_expression(expression: Any) -> jmespath.parser.ParsedResult:
    """Compile a JMESPath `expression`; raise `ExpressionError` saying what is wrong."""
    if not isinstance(expression, str) or not expression.strip():
        raise ExpressionError(
            f'expression must be a non-empty JMESPath string (e.g. "latency_ms"), '
            f"got {expression!r}"
        )
    try:
        compiled = jmespath.compile(expression)
    except jmespath.exceptions.JMESPathError as exc:
        detail = " ".join(str(exc).split())
        raise ExpressionError(f"expression {expression!r} is not valid JMESPath: {detail}") from exc
    try:
        _check_functions(compiled.parsed)
    except ExpressionError as exc:
        raise ExpressionError(f"expression {expression!r}: {exc}") from None
    return compiled


def number_at(compiled: jmespath.parser.ParsedResult, doc: Any) -> float | None:
    """Evaluate `compiled` on `doc` and return the result as a finite float, else None.

    None when the result is missing, null, a bool, not a number or not finite, or when the
    document does not fit the expression (e.g. `min()` over strings).
    """
    try:
        value = compiled.search(doc)
    except jmespath.exceptions.JMESPathError:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None
