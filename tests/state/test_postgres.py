"""The PostgreSQL online store against the real server the session starts (tests/conftest.py)."""

import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql
from streamml.state.postgres import POSITIONS_TABLE, SCHEMA, PostgresStore, validate_identifier
from streamml.state.postgres_server import PostgresServerError, find_postgres_bin, start_postgres

_names = itertools.count()


def fresh(prefix: str = "t") -> str:
    return f"{prefix}_{os.getpid()}_{next(_names)}"


def test_round_trip_in_input_order_with_missing_entities(postgres_dsn):
    with PostgresStore(postgres_dsn, fresh()) as store:
        assert store.load([]) == []
        assert store.load([b"a", b"b"]) == [None, None]
        store.commit([b"a", b"b\x00c"], [b"rec-a", b"rec-b"], [10, 20], "v1", {"p0": 3})
        assert store.load([b"zz", b"b\x00c", b"a", b"a"]) == [None, b"rec-b", b"rec-a", b"rec-a"]
        rows = list(store.iter_rows())
        assert rows == [(b"a", b"rec-a", 10, "v1"), (b"b\x00c", b"rec-b", 20, "v1")]


def test_positions_start_at_minus_one_and_follow_commits(postgres_dsn):
    with PostgresStore(postgres_dsn, fresh()) as store:
        assert store.applied_position("p0") == -1
        assert store.applied_positions() == {}
        store.commit([b"a"], [b"r"], np.array([1]), "v1", {"p0": 5, "p1": 7})
        store.commit([], [], [], "v1", {"p0": 9})
        assert store.applied_position("p0") == 9
        assert store.applied_positions() == {"p0": 9, "p1": 7}


def test_namespaces_are_isolated_including_their_positions(postgres_dsn):
    a, b = fresh(), fresh()
    with PostgresStore(postgres_dsn, a) as sa, PostgresStore(postgres_dsn, b) as sb:
        sa.commit([b"x"], [b"from-a"], [1], "v1", {"p": 1})
        assert sb.load([b"x"]) == [None]
        assert sb.applied_positions() == {}


def test_same_batch_twice_leaves_the_same_rows(postgres_dsn):
    entities = [f"e{i}".encode() for i in range(50)]
    records = [bytes([i]) * 120 for i in range(50)]
    times = np.arange(50, dtype=np.int64) * 1000
    with PostgresStore(postgres_dsn, fresh()) as store:
        store.commit(entities, records, times, "v1", {"p0": 49})
        first = list(store.iter_rows())
        store.commit(entities, records, times, "v1", {"p0": 49})
        assert list(store.iter_rows()) == first
        assert store.applied_positions() == {"p0": 49}


def test_an_entity_twice_in_one_batch_keeps_its_last_record(postgres_dsn):
    with PostgresStore(postgres_dsn, fresh()) as store:
        store.commit([b"a", b"b", b"a"], [b"1", b"2", b"3"], [1, 2, 3], "v1", {})
        assert list(store.iter_rows()) == [(b"a", b"3", 3, "v1"), (b"b", b"2", 2, "v1")]


def test_a_failure_mid_transaction_leaves_neither_records_nor_position(postgres_dsn):
    with PostgresStore(postgres_dsn, fresh()) as store:
        store.commit([b"a"], [b"old"], [1], "v1", {"p0": 1})
        # The records are upserted first, then the position, which overflows bigint: the whole
        # transaction must roll back.
        with pytest.raises(psycopg.Error):
            store.commit([b"a", b"b"], [b"new", b"new"], [2, 2], "v1", {"p0": 2**63})
        assert store.load([b"a", b"b"]) == [b"old", None]
        assert store.applied_positions() == {"p0": 1}
        store.commit([b"b"], [b"ok"], [3], "v1", {"p0": 3})  # the connection is usable again
        assert store.load([b"a", b"b"]) == [b"old", b"ok"]


def test_bad_arguments_are_refused_with_what_was_expected(postgres_dsn):
    for name in ["Signal", "1x", "a-b", "x; DROP TABLE y", "", "a" * 64, POSITIONS_TABLE]:
        with pytest.raises(ValueError, match="namespace"):
            validate_identifier(name)
    with (
        PostgresStore(postgres_dsn, fresh()) as store,
        pytest.raises(ValueError, match="one record and one updated_at per entity"),
    ):
        store.commit([b"a", b"b"], [b"r"], [1, 2], "v1", {})


def test_writer_killed_mid_run_leaves_records_and_positions_of_the_same_batches(postgres_dsn):
    """kill -9 a writer process: every entity's record is from the batch its position says."""
    namespace = fresh()
    PostgresStore(postgres_dsn, namespace).close()
    writer = textwrap.dedent(
        f"""
        import sys
        from streamml.state.postgres import PostgresStore
        store = PostgresStore({postgres_dsn!r}, {namespace!r})
        entities = [b"e%04d" % i for i in range(500)]
        for k in range(1_000_000):
            store.commit(entities, [b"%08d" % k] * 500, [k] * 500, "v1", {{"p0": k}})
            if k == 3:
                print("running", flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "running"
        time.sleep(0.3)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with PostgresStore(postgres_dsn, namespace) as store:
        applied = store.applied_position("p0")
        records = store.load([b"e%04d" % i for i in range(500)])
    assert applied >= 3
    assert set(records) == {b"%08d" % applied}


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    batches=st.lists(
        st.tuples(
            st.lists(
                st.tuples(
                    st.sampled_from([b"a", b"b", b"c", b"\x00", b"\xff" * 3]),
                    st.binary(max_size=16),
                    st.integers(-(2**63), 2**63 - 1),
                ),
                max_size=6,
            ),
            st.sampled_from(["v1", "v2"]),
            st.dictionaries(st.sampled_from(["p0", "p1", "topic/3"]), st.integers(-1, 10**12)),
        ),
        max_size=6,
    )
)
def test_commits_match_a_dict_oracle(postgres_dsn, batches):
    rows: dict[bytes, tuple[bytes, int, str]] = {}
    positions: dict[str, int] = {}
    with PostgresStore(postgres_dsn, fresh("prop")) as store:
        for batch, version, parts in batches:
            entities, records, times = ([b[i] for b in batch] for i in range(3))
            store.commit(entities, records, times, version, parts)
            for entity, record, updated in batch:
                rows[entity] = (record, updated, version)
            positions.update(parts)
            keys = [b"a", b"b", b"c", b"\x00", b"\xff" * 3, b"never"]
            assert store.load(keys) == [rows[k][0] if k in rows else None for k in keys]
            assert store.applied_positions() == positions
        assert list(store.iter_rows()) == [(k, *rows[k]) for k in sorted(rows)]


def test_a_reader_is_never_blocked_by_an_open_write_transaction(postgres_dsn):
    namespace = fresh()
    with PostgresStore(postgres_dsn, namespace) as store:
        store.commit([b"a"], [b"committed"], [1], "v1", {"p0": 1})
    with psycopg.connect(postgres_dsn) as writer:  # a transaction left open, rows locked
        table = sql.Identifier(SCHEMA, namespace)
        writer.execute(sql.SQL("UPDATE {} SET record = 'uncommitted'").format(table))
        with PostgresStore(postgres_dsn, namespace) as reader:
            reader._conn.execute("SET statement_timeout = '2s'")
            assert reader.load([b"a"]) == [b"committed"]
            assert reader.applied_position("p0") == 1
        writer.rollback()


def test_concurrent_reader_sees_whole_batches_in_order(postgres_dsn):
    namespace = fresh()
    entities = [b"e%03d" % i for i in range(200)]
    with PostgresStore(postgres_dsn, namespace) as writer:
        writer.commit(entities, [b"%06d" % 0] * 200, [0] * 200, "v1", {"p0": 0})
        seen: list[int] = []
        stop = threading.Event()

        def read() -> None:
            with PostgresStore(postgres_dsn, namespace) as reader:
                while not stop.is_set():
                    records = reader.load(entities)
                    assert len(set(records)) == 1, "a read mixed two batches"
                    seen.append(int(records[0]))

        thread = threading.Thread(target=read)
        thread.start()
        try:
            for k in range(1, 101):
                writer.commit(entities, [b"%06d" % k] * 200, [k] * 200, "v1", {"p0": k})
        finally:
            stop.set()
            thread.join(timeout=10)
        assert not thread.is_alive()
    assert len(seen) > 1
    assert seen == sorted(seen), "a reader went back in time"


@pytest.fixture
def open_dir():
    """A temporary directory an unprivileged server user can reach (pytest's tmp_path under root
    is not: /tmp/pytest-of-root is private)."""
    path = Path(tempfile.mkdtemp(prefix="streamml-pg-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_given_data_dir_keeps_its_rows_across_restarts(open_dir):
    data = open_dir / "pg"
    with start_postgres(data, durable=False) as server, PostgresStore(server.dsn, "kept") as store:
        store.commit([b"a"], [b"r"], [1], "v1", {"p0": 4})
    assert (data / "PG_VERSION").exists()
    with start_postgres(data, durable=False) as server, PostgresStore(server.dsn, "kept") as store:
        assert store.load([b"a"]) == [b"r"]
        assert store.applied_positions() == {"p0": 4}


def test_a_missing_binary_or_unusable_data_dir_is_reported(open_dir):
    with pytest.raises(PostgresServerError, match="has no initdb and no postgres binary"):
        start_postgres(bin_dir=open_dir, durable=False)
    (open_dir / "junk").mkdir()
    (open_dir / "junk" / "file").write_text("x")
    with pytest.raises(PostgresServerError, match="neither empty nor a PostgreSQL data dir"):
        start_postgres(open_dir / "junk", durable=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the server to another account")
def test_under_root_binaries_in_a_private_directory_are_copied_where_the_server_can_reach_them(
    open_dir,
):
    source = find_postgres_bin().parents[1]  # .../site-packages/pgserver
    private = open_dir / "private"
    private.mkdir(mode=0o700)
    shutil.copytree(source / "pginstall", private / "pgserver" / "pginstall", symlinks=True)
    shutil.copytree(source.parent / "pgserver.libs", private / "pgserver.libs", symlinks=True)
    install = private / "pgserver" / "pginstall"
    st = install.stat()
    cache = Path(tempfile.gettempdir()) / f"streamml-pgserver-{st.st_ino}-{int(st.st_mtime)}"
    try:
        with start_postgres(bin_dir=install / "bin", durable=False) as server:
            assert Path(server._proc.args[0]).is_relative_to(cache)
            with PostgresStore(server.dsn, "copied") as store:
                store.commit([b"a"], [b"r"], [1], "v1", {})
                assert store.load([b"a"]) == [b"r"]
    finally:
        shutil.rmtree(cache, ignore_errors=True)
