"""Settings of the REST service: a frozen dataclass built once from CLI flags or the env."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import orjson

__all__ = ["CONFIG_ENV", "ServeConfig"]

_PATHS = ("state_dir", "registry_dir", "prediction_store", "tokens")
CONFIG_ENV = "STREAMML_SERVE_CONFIG"
"""Environment variable carrying a `ServeConfig` as JSON to worker processes."""


@dataclass(frozen=True)
class ServeConfig:
    """Everything `streamml serve` needs.

    `deadline_ms` bounds every request (past it: 504 naming the stage that was running);
    `fetch_wait_ms` is how long a prediction waits for on-demand answers before scoring with
    stale answers or each feature's missing policy, as the flow does at its request deadline.
    `rate_per_s` and `burst` are each token's rate limit (a token bucket per worker process).
    `online_refresh_ms` is how often the online and on-demand stores catch up with their writers.
    Without `tokens` there is no authentication, which is refused unless `host` is loopback.
    """

    state_dir: Path
    registry_dir: Path
    telemetry_url: str | None = None
    brokers: tuple[str, ...] = ()
    requests_topic: str | None = None
    prediction_store: Path | None = None
    tokens: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    http: str = "granian"
    deadline_ms: int = 1000
    fetch_wait_ms: int = 300
    fetch_timeout_ms: int = 250
    fetch_attempts: int = 2
    max_body_bytes: int = 65_536
    rate_per_s: float = 1000.0
    burst: int = 2000
    online_refresh_ms: int = 20
    flush_interval_ms: int = 1000
    pipeline_version: str = "predict/1"

    def __post_init__(self) -> None:
        for name in _PATHS:
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        object.__setattr__(self, "brokers", tuple(self.brokers))
        for name in (
            "port",
            "workers",
            "deadline_ms",
            "fetch_wait_ms",
            "fetch_timeout_ms",
            "fetch_attempts",
            "max_body_bytes",
            "burst",
            "online_refresh_ms",
            "flush_interval_ms",
        ):
            if getattr(self, name) < (0 if name == "port" else 1):
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.rate_per_s > 0:
            raise ValueError(f"rate_per_s must be > 0, got {self.rate_per_s}")
        if self.http not in ("uvicorn", "granian"):
            raise ValueError(f"http must be uvicorn or granian, got {self.http!r}")
        if bool(self.brokers) != bool(self.requests_topic):
            raise ValueError("--brokers and --requests-topic go together (both or neither)")
        if self.tokens is None and not _loopback(self.host):
            raise ValueError(
                f"refusing to serve on {self.host} without authentication; pass --tokens FILE "
                "(see `streamml serve tokens add`) or bind to 127.0.0.1"
            )

    @property
    def store(self) -> Path:
        """The prediction store root (the flow's default: STATE_DIR/predictions)."""
        return self.prediction_store or self.state_dir / "predictions"

    def to_json(self) -> bytes:
        """Return the config as JSON (for `CONFIG_ENV`)."""
        return orjson.dumps(asdict(self), default=str)

    @classmethod
    def from_json(cls, raw: bytes | str) -> ServeConfig:
        """Rebuild a config written by `to_json`."""
        data: dict[str, Any] = orjson.loads(raw)
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServeConfig:
        """Read the config from `CONFIG_ENV`."""
        env = os.environ if env is None else env
        raw = env.get(CONFIG_ENV)
        if not raw:
            raise ValueError(f"{CONFIG_ENV} is not set; start the service with `streamml serve`")
        return cls.from_json(raw)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
