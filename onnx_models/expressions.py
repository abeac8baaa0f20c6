"""JMESPath expressions that pick one number out of a JSON document.

Feature sources name their values with JMESPath (`min(devices[].rssi_dbm)`, `modem.uptime_h`):
`compile_expression` compiles one and also refuses unknown functions and wrong argument counts,
which `jmespath.compile` leaves to search time; `number_at` evaluates it and keeps only finite
numbers. Nothing is ever passed to `eval`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jmespath
import jmespath.exceptions
import jmespath.functions
import jmespath.parser

__all__ = ["ExpressionError", "compile_expression", "number_at", "number_getter"]

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
    return _finite(value)


def _field_path(node: Any) -> tuple[str, ...] | None:
    """Return the keys of an expression made only of field names (`a`, `a.b.c`), else None."""
    if not isinstance(node, dict):
        return None
    if node.get("type") == "field":
        return (node["value"],)
    if node.get("type") == "subexpression":
        out: tuple[str, ...] = ()
        for child in node.get("children", ()):
            part = _field_path(child)
            if part is None:
                return None
            out += part
        return out
    return None


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def number_getter(compiled: jmespath.parser.ParsedResult) -> Callable[[Any], float | None]:
    """Return a function equal to ``lambda doc: number_at(compiled, doc)``.

    Expressions made only of field names (`latency_ms`, `modem.uptime_h`) are read with plain
    dictionary lookups, which is what JMESPath does for them, without its interpreter.
    """
    keys = _field_path(compiled.parsed)
    if keys is None:
        return lambda doc: number_at(compiled, doc)
    if len(keys) == 1:
        (key,) = keys

        def one(doc: Any) -> float | None:
            return _finite(doc.get(key)) if isinstance(doc, dict) else None

        return one

    def path(doc: Any) -> float | None:
        for key in keys:
            if not isinstance(doc, dict):
                return None
            doc = doc.get(key)
        return _finite(doc)

    return path
