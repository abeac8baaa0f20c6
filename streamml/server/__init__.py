"""The REST service (`streamml serve`): predictions, requests to the stream, features, models.

Predictions on demand, requests pushed to the stream, queryable online features, model
metadata; authenticated, limited, observable.

It runs the prediction flow's library code (`streamml.operators.assembly`, `.gather`) and the
flow's writers, so a prediction made here is recorded exactly like one made by the flow.
Modules: `config` (ServeConfig), `auth` (tokens, rate limit), `http` (the lean ASGI layer),
`validate`, `service` (the work, no HTTP) with `answers`, `batching`, `fetching` and `recorder`,
`app` (routes), `openapi`, `metrics`, `runner` (granian or uvicorn, workers, threads, child
processes).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "SCOPES",
    "ServeConfig",
    "ServerThread",
    "add_token",
    "check_paths",
    "create_app",
    "serve",
    "start_server_process",
]

_HOMES: dict[str, tuple[str, ...]] = {
    "app": ("create_app",),
    "auth": ("SCOPES", "add_token"),
    "config": ("ServeConfig",),
    "runner": ("ServerThread", "check_paths", "serve", "start_server_process"),
}
"""Where each public name lives: imported on first use, so importing one submodule of
this package does not load the others (and their dependencies)."""

_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    """Import a public name from its submodule on first use."""
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """List the public names, imported or not."""
    return sorted({*globals(), *__all__})
