"""Fixtures of the REST service tests: a state dir with online values, tokens, a running server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from streamml.state.layout import StateLayout
from streamml.state.rolling_store import RollingStateStore, create_shard, empty_records
from streamml.state.sharding import shard_of

from streamml.server import ServeConfig, ServerThread, add_token, create_app
from tests.dataflows.conftest import registry, registry_template, telemetry  # noqa: F401

NOW = 1_790_000_000_000
HOUR = 3_600_000
SHARDS = 2
CONTEXT = {"download_ratio": 0.4, "upload_ratio": 0.9, "latency_ms": 30.0, "packet_loss_pct": 0.5}
ACCOUNTS = {f"acct-{i}": (10 * i + 1, NOW - i * 60_000) for i in range(20)}
"""account -> (signal errors in the current hour, updated_at): acct-6 and later are stale."""


def write_values(state: Path, values: dict[str, tuple[int, int]], position: int = 0) -> None:
    """Write each account's count (one hour bucket) and updated_at into the online store."""
    layout = StateLayout.read(state)
    assert layout is not None
    stores = {}
    try:
        for account, (count, updated_at) in values.items():
            shard = shard_of(account.encode(), layout.shards)
            store = stores.get(shard)
            if store is None:
                store = stores[shard] = RollingStateStore(
                    StateLayout.shard_dir(state, shard),
                    feature=layout.feature_id,
                    window=layout.window_buckets,
                )
            rec = empty_records(1, layout.window_buckets)
            rec["max_bucket"] = updated_at // HOUR
            rec["updated_at"] = updated_at
            rec["counts"][0][0] = count
            store.commit([account.encode()], rec, {"test": position})
    finally:
        for store in stores.values():
            store.close()


def make_state(path: Path, values: dict[str, tuple[int, int]] | None = None) -> Path:
    """A state dir of `SHARDS` shards holding `values` (default `ACCOUNTS`)."""
    layout = StateLayout(shards=SHARDS).ensure(path)
    for shard in range(layout.shards):
        create_shard(StateLayout.shard_dir(path, shard))
    write_values(path, ACCOUNTS if values is None else values)
    return path


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return make_state(tmp_path / "state")


@pytest.fixture
def tokens(tmp_path: Path) -> dict[str, str]:
    """Tokens by name: reader (features:read), predictor (predict), admin; file at `path`."""
    path = tmp_path / "tokens.json"
    out = {
        "reader": add_token(path, "reader", ["features:read"]),
        "predictor": add_token(path, "predictor", ["predict"]),
        "admin": add_token(path, "admin", ["admin"]),
    }
    out["path"] = str(path)
    return out


@pytest.fixture
def serve(state: Path, registry) -> Callable[..., ServerThread]:  # noqa: F811
    """Return `serve(**config) -> context manager yielding a running ServerThread`."""

    @contextmanager
    def start(**kw) -> Iterator[ServerThread]:
        config = ServeConfig(
            state_dir=kw.pop("state_dir", state), registry_dir=registry.root, port=0, **kw
        )
        with ServerThread(create_app(config)) as server:
            yield server

    return start


def client(server: ServerThread, token: str | None = None) -> httpx.Client:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=server.url, headers=headers, timeout=10)
