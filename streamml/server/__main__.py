"""``python -m streamml.server``: serve the config in `STREAMML_SERVE_CONFIG` (child processes)."""

from streamml.server.config import ServeConfig
from streamml.server.runner import serve

serve(ServeConfig.from_env())
