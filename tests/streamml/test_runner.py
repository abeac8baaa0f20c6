"""Tests of `streamml.runner`: the figures of a run of several real worker processes."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

from streamml.runner import own_peak_rss, run_flow_processes
from streamml.worker import listening_ports, wait_for_lower_peers

REPO = Path(__file__).resolve().parents[2]
MIB = 2**20


def _env(ballast_mib: int) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "STREAMML_TEST_BALLAST_MIB": str(ballast_mib)}


def test_peak_rss_of_two_processes_is_the_sum_of_their_peaks() -> None:
    one = run_flow_processes("tests.streamml.ballast_flow:flow", _env(150), processes=1)
    two = run_flow_processes("tests.streamml.ballast_flow:flow", _env(150), processes=2)
    assert one.returncode == 0 and two.returncode == 0
    # each worker holds 150 MiB of ballast on top of the interpreter and Bytewax
    assert one.peak_rss_bytes >= 150 * MIB
    assert two.peak_rss_bytes >= 300 * MIB
    # the largest single worker is well below two workers' sum
    assert two.peak_rss_bytes > 1.6 * one.peak_rss_bytes


def test_own_peak_rss_of_this_process() -> None:
    assert own_peak_rss(os.getpid()) > 0


def _listener_after(delay_s: float) -> tuple[socket.socket, threading.Thread]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))

    def listen() -> None:
        time.sleep(delay_s)
        sock.listen()

    thread = threading.Thread(target=listen)
    thread.start()
    return sock, thread


def test_a_process_waits_until_the_processes_before_it_listen() -> None:
    first, t1 = _listener_after(0.3)
    second, t2 = _listener_after(0.5)
    mine = socket.socket()
    mine.bind(("127.0.0.1", 0))  # this process's own address: never waited for
    addresses = [f"127.0.0.1:{s.getsockname()[1]}" for s in (first, second, mine)]
    try:
        t0 = time.monotonic()
        assert wait_for_lower_peers(addresses, 2, timeout_s=10)
        waited = time.monotonic() - t0
        assert 0.5 <= waited < 0.9
        assert {first.getsockname()[1], second.getsockname()[1]} <= (listening_ports() or set())
        assert mine.getsockname()[1] not in (listening_ports() or set())
    finally:
        t1.join()
        t2.join()
        for s in (first, second, mine):
            s.close()


def test_waiting_for_peers_gives_up_at_the_timeout_and_skips_other_hosts() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))  # bound, never listening
    address = f"127.0.0.1:{silent.getsockname()[1]}"
    try:
        t0 = time.monotonic()
        assert not wait_for_lower_peers([address, "127.0.0.1:1"], 1, timeout_s=0.2)
        assert 0.2 <= time.monotonic() - t0 < 1.0
        # process 0 waits for nobody; addresses of other hosts are left to Timely's retries
        assert wait_for_lower_peers([address, "127.0.0.1:1"], 0, timeout_s=5)
        t0 = time.monotonic()
        assert wait_for_lower_peers(["10.255.255.1:9999", "peer-0.flow:9999", "x:1"], 2)
        assert time.monotonic() - t0 < 0.1
    finally:
        silent.close()


def test_processes_on_one_host_connect_without_timelys_one_second_retry(tmp_path: Path) -> None:
    # Before the processes waited for each other, about two runs in three logged a retry.
    for i in range(4):
        log = (tmp_path / f"log-{i}").open("w+")
        result = run_flow_processes(
            "tests.streamml.ballast_flow:flow", _env(0), processes=3, log=log
        )
        log.seek(0)
        text = log.read()
        assert result.returncode == 0, text
        assert "retrying" not in text, text
