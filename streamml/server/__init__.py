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

from streamml.server.app import create_app
from streamml.server.auth import SCOPES, add_token
from streamml.server.config import ServeConfig
from streamml.server.runner import ServerThread, check_paths, serve, start_server_process

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
