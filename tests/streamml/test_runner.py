"""Tests of `streamml.runner`: the figures of a run of several real worker processes."""

from __future__ import annotations

import os
from pathlib import Path

from streamml.runner import own_peak_rss, run_flow_processes

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
