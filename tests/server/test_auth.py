"""Token files (hashed at rest) and the per-token rate limit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from streamml.server.auth import RateLimiter, TokenStore, add_token


def test_tokens_are_stored_hashed_with_their_scopes(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    first = add_token(path, "ops", ["admin"])
    second = add_token(path, "app", ["predict", "features:read"])
    assert first.startswith("sml_") and first != second
    text = path.read_text()
    assert first not in text and second not in text
    assert os.stat(path).st_mode & 0o777 == 0o600
    store = TokenStore(path)
    app = store.check(second)
    assert app is not None and app.allows("predict") and not app.allows("admin")
    assert store.check(first).allows("predict")  # admin implies every scope
    assert store.check(second + "x") is None
    replaced = add_token(path, "app", ["predict"])
    assert TokenStore(path).check(second) is None and TokenStore(path).check(replaced)
    with pytest.raises(ValueError, match="scopes"):
        add_token(path, "x", ["root"])


def test_rate_limiter_refills_at_its_rate() -> None:
    now = [0.0]
    limiter = RateLimiter(rate_per_s=10, burst=2, clock=lambda: now[0])
    assert limiter.take("a") == 0 and limiter.take("a") == 0
    wait = limiter.take("a")
    assert wait == pytest.approx(0.1)
    assert limiter.take("b") == 0  # buckets are per token
    now[0] += 0.1
    assert limiter.take("a") == 0
    assert RateLimiter.retry_after(0.1) == "1" and RateLimiter.retry_after(2.2) == "3"
