"""`streamml postgres start`, run as a user runs it."""

import signal
import subprocess
import sys
import time

from streamml.state.postgres import PostgresStore

from streamml.broker import free_port


def test_postgres_start_serves_the_store_and_stops_on_ctrl_c():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamml.cli", "postgres", "start", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        deadline = time.time() + 60
        out = ""
        while "Ctrl-C" not in out and time.time() < deadline and proc.poll() is None:
            out += proc.stdout.readline()
        assert f"PostgreSQL ready at {dsn}" in out, out
        with PostgresStore(dsn, "cli_check") as store:
            store.commit([b"a"], [b"r"], [1], "v1", {"p0": 1})
            assert store.load([b"a"]) == [b"r"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
