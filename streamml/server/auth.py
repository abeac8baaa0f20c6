"""Bearer tokens with scopes, kept hashed in a file; a token bucket per token.

The token file is JSON: ``{"tokens": [{"name", "sha256", "scopes": [...]}, ...]}``. A token is
32 random bytes (URL-safe base64, prefixed ``sml_``); only its SHA-256 is stored. A fast hash
is enough here, unlike for passwords: the secret has 256 bits of entropy, so no dictionary or
brute-force attack applies, and a slow hash (scrypt) would cost milliseconds on every request.
Lookups go by the hash, so a token is never compared byte by byte.
"""

from __future__ import annotations

import hashlib
import math
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson

__all__ = ["SCOPES", "Principal", "RateLimiter", "TokenStore", "add_token"]

SCOPES = ("features:read", "predict", "admin")
"""Scopes a token may hold; `admin` implies the others."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: the token's name and scopes."""

    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        """Whether the token holds `scope` (or `admin`)."""
        return scope in self.scopes or "admin" in self.scopes


ANONYMOUS = Principal("anonymous", frozenset(SCOPES))


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenStore:
    """The tokens of a token file, by hash. Without a file every caller is anonymous (admin)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.enabled = path is not None
        self._by_hash: dict[str, Principal] = {}
        if path is not None:
            for entry in _read(path):
                self._by_hash[entry["sha256"]] = Principal(
                    entry["name"], frozenset(entry["scopes"])
                )

    def check(self, token: str) -> Principal | None:
        """Return the principal of `token`, or None when it is unknown."""
        return self._by_hash.get(_digest(token))


def _read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    data = orjson.loads(path.read_bytes())
    tokens = data.get("tokens") if isinstance(data, dict) else None
    if not isinstance(tokens, list):
        raise ValueError(f"{path}: expected a JSON object with a `tokens` list")
    for t in tokens:
        if not (
            isinstance(t, dict)
            and isinstance(t.get("name"), str)
            and isinstance(t.get("sha256"), str)
            and isinstance(t.get("scopes"), list)
            and set(t["scopes"]) <= set(SCOPES)
        ):
            raise ValueError(f"{path}: bad token entry {t!r}; expected name, sha256, scopes")
    return tokens


def add_token(path: Path, name: str, scopes: Iterable[str]) -> str:
    """Create a token named `name` with `scopes` in the file at `path`; return the token.

    The file is created (mode 0600) if needed; a token of the same name is replaced. The token
    itself is printed once by the CLI and never stored.
    """
    scopes = sorted(set(scopes))
    unknown = set(scopes) - set(SCOPES)
    if unknown or not scopes:
        raise ValueError(f"scopes must be among {SCOPES}, got {scopes}")
    if not name or len(name) > 128:
        raise ValueError(f"token name must be 1-128 characters, got {name!r}")
    token = "sml_" + secrets.token_urlsafe(32)
    tokens = [t for t in _read(path) if t["name"] != name]
    tokens.append({"name": name, "sha256": _digest(token), "scopes": scopes})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(orjson.dumps({"tokens": tokens}, option=orjson.OPT_INDENT_2))
    os.replace(tmp, path)
    return token


class RateLimiter:
    """A token bucket per key: `rate_per_s` sustained, `burst` at once.

    `take(key)` returns 0.0 when the request may go, else the seconds until it could.
    Buckets of idle keys are dropped once full again, so memory follows the active keys.
    """

    def __init__(self, rate_per_s: float, burst: int, clock=time.monotonic) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float:
        """Spend one request of `key`'s bucket; return 0.0, or the wait in seconds."""
        now = self.clock()
        level, last = self._buckets.get(key, (self.burst, now))
        level = min(self.burst, level + (now - last) * self.rate)
        if level < 1.0:
            self._buckets[key] = (level, now)
            return (1.0 - level) / self.rate
        self._buckets[key] = (level - 1.0, now)
        if len(self._buckets) > 10_000:
            self._prune(now)
        return 0.0

    def _prune(self, now: float) -> None:
        full = [
            k for k, (lv, t) in self._buckets.items() if lv + (now - t) * self.rate >= self.burst
        ]
        for k in full:
            del self._buckets[k]

    @staticmethod
    def retry_after(wait_s: float) -> str:
        """Return the `Retry-After` header value (whole seconds, at least 1)."""
        return str(max(1, math.ceil(wait_s)))
