"""Features kept in PostgreSQL: upserted by the flow, read through get_features, kill -9 safe."""

import dataclasses
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
import psycopg
from bytewax.testing import run_main
from psycopg.conninfo import make_conninfo
from streamml.dataflows.features import FeaturesConfig, SourceInput, build_flow
from streamml.operators.sources import GeneratorConfig, generate_speed_tests
from streamml.state.definitions import default_definitions_path
from streamml.state.feature_manifest import read_sources
from streamml.state.feature_records import RecordLayout
from streamml.state.layout import StateLayout
from streamml.state.online import OnlineStore
from streamml.state.postgres import PostgresStore
from streamml.state.rolling_store import RollingStateStore

from streamml.recovery import ensure_recovery_dir, recovery_args
from tests.dataflows.test_recovery import group_members, kill_group, started


def fresh_database(dsn: str) -> str:
    """Create an empty database on the test server; return its DSN."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return make_conninfo(dsn, dbname=name)


def definitions(tmp: Path) -> Path:
    """The bundled definitions, with one speed-test feature in both stores and one in PG only."""
    text = default_definitions_path().read_text()
    text = text.replace(
        'field = "download_ratio"\nbucket = "1d"\nwindow = "7d"\nttl = "1d"',
        'field = "download_ratio"\nbucket = "1d"\nwindow = "7d"\nttl = "1d"\n'
        'online = ["rocksdb", "postgres"]',
    )
    text = text.replace(
        'field = "latency_ms"\nbucket = "1h"\nwindow = "24h"\nttl = "1h"',
        'field = "latency_ms"\nbucket = "1h"\nwindow = "24h"\nttl = "1h"\nonline = ["postgres"]',
    )
    assert text.count("postgres") == 2
    path = tmp / "features.toml"
    path.write_text(text)
    return path


def write_tests(path: Path, events: int, accounts: int) -> None:
    keys, ts, fields = generate_speed_tests(
        GeneratorConfig(events=events, accounts=accounts, seed=3, start_ms=1_767_225_600_000)
    )
    rows = keys.to_pylist()
    with open(path, "wb") as f:
        for i in range(len(rows)):
            body = {"account": rows[i].decode(), "ts": int(ts[i])}
            body |= {k: float(v[i]) for k, v in fields.items()}
            f.write(orjson.dumps(body) + b"\n")


def config(tmp: Path, name: str, defs: Path, data: Path, dsn: str, recovery: bool):
    return FeaturesConfig(
        inputs=(SourceInput("speed_tests", "file", (str(data),)),),
        state_dir=tmp / name / "state",
        definitions_path=defs,
        shards=4,
        history_dir=None,
        stats_path=tmp / name / "stats.json",
        recovery_dir=tmp / name / "recovery" if recovery else None,
        settle_ms=0,
        postgres_dsn=dsn,
    )


def rocksdb_records(cfg: FeaturesConfig, name: str = "speed_tests") -> dict[bytes, bytes]:
    source = read_sources(cfg.state_dir)[name]
    template = RecordLayout(source.features).empty(1)
    out = {}
    for shard in range(cfg.shards):
        store = RollingStateStore(
            StateLayout.shard_dir(cfg.state_dir, shard),
            feature=source.id,
            window=1,
            read_only=True,
            template=template,
        )
        try:
            out.update((k, r.tobytes()) for k, r in store.iter_records())
        finally:
            store.close()
    return out


def postgres_records(dsn: str) -> dict[bytes, bytes]:
    with PostgresStore(dsn, "speed_tests") as pg:
        return {e: r for e, r, _u, _v in pg.iter_rows()}


def test_postgres_features_are_upserted_and_read_back(tmp_path, postgres_dsn):
    dsn = fresh_database(postgres_dsn)
    defs = definitions(tmp_path)
    data = tmp_path / "tests.jsonl"
    write_tests(data, 20_000, 300)
    cfg = config(tmp_path, "run", defs, data, dsn, recovery=False)
    run_main(build_flow(cfg))
    stored = rocksdb_records(cfg)
    assert postgres_records(dsn) == stored and len(stored) == 300
    as_of = 1_767_225_600_000 + 3 * 86_400_000
    accounts = sorted(a.decode() for a in stored)[:50]
    names = ["download_ratio_mean_7d", "latency_ms_max_24h", "speed_tests_24h"]
    with_pg = OnlineStore(cfg.state_dir, postgres_dsn=dsn).get_features(accounts, names, as_of)
    without = OnlineStore(cfg.state_dir)
    try:
        without.get_features(accounts, ["latency_ms_max_24h"], as_of)
        raise AssertionError("a PostgreSQL-only feature was read without a DSN")
    except KeyError as exc:
        assert "PostgreSQL only" in str(exc)
    rocks = without.get_features(accounts, ["download_ratio_mean_7d", "speed_tests_24h"], as_of)
    for a, b in zip(with_pg, rocks, strict=True):
        assert a["download_ratio_mean_7d"] == b["download_ratio_mean_7d"]
        assert a["speed_tests_24h"] == b["speed_tests_24h"]
        assert a["latency_ms_max_24h"].status in ("fresh", "stale", "missing")
    assert any(r["latency_ms_max_24h"].value is not None for r in with_pg)


FLOW = [sys.executable, "-m", "bytewax.run", "streamml.dataflows.features:flow"]


def test_postgres_store_survives_kill_9(tmp_path, postgres_dsn):
    defs = definitions(tmp_path)
    data = tmp_path / "tests.jsonl"
    write_tests(data, 600_000, 20_000)
    clean_dsn, crash_dsn = fresh_database(postgres_dsn), fresh_database(postgres_dsn)
    clean = config(tmp_path, "clean", defs, data, clean_dsn, recovery=False)
    run_main(build_flow(clean))
    crashed = config(tmp_path, "crashed", defs, data, crash_dsn, recovery=True)
    crashed = dataclasses.replace(
        crashed, inputs=(SourceInput("speed_tests", "file", (str(data),), chunk_bytes=1 << 20),)
    )
    ensure_recovery_dir(crashed.recovery_dir)
    args = recovery_args(crashed.recovery_dir, 1)
    env = {**os.environ, **crashed.to_env()}
    rng = random.Random(5)
    kills = 0
    for _attempt in range(40):
        if crashed.stats_path.exists():
            crashed.stats_path.unlink()
        proc = subprocess.Popen([*FLOW, *args], env=env, start_new_session=True)
        if kills < 4:
            deadline = time.time() + 120
            while not started(crashed.stats_path) and proc.poll() is None:
                assert time.time() < deadline
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.6))
            if proc.poll() is None:
                kill_group(proc)
                kills += 1
                continue
        assert proc.wait(timeout=600) == 0
        assert not group_members(proc.pid)
        break
    assert kills >= 2
    expected = rocksdb_records(clean)
    assert rocksdb_records(crashed) == expected
    got = postgres_records(crash_dsn)
    assert got.keys() == expected.keys()
    diff = [k for k in expected if got[k] != expected[k]]
    assert not diff, f"{len(diff)} records differ, e.g. {diff[:3]}"
    assert np.all([len(v) for v in got.values()])
