"""The telemetry service over real HTTP on loopback."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import quote

import aiohttp
import orjson
import pytest
from streamml.onnx_models import account_profile, telemetry_document, triage_contract

from streamml.telemetry import TelemetryConfig, start_telemetry_server
from streamml.telemetry_process import start_telemetry_process

QUIET = {"latency_ms": 0.0, "jitter_ms": 0.0, "failure_rate": 0.0}


async def _get_all(base: str, paths: list[str]) -> list[tuple[int, object, float]]:
    async with aiohttp.ClientSession() as session:

        async def one(path: str) -> tuple[int, object, float]:
            started = time.monotonic()
            async with session.get(base + path) as resp:
                body = orjson.loads(await resp.read())
                return resp.status, body, time.monotonic() - started

        return list(await asyncio.gather(*(one(p) for p in paths)))


def get_all(base: str, paths: list[str]) -> list[tuple[int, object, float]]:
    return asyncio.run(_get_all(base, paths))


def get(url: str) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def path_of(account: str) -> str:
    return "/v1/telemetry/" + quote(account, safe="")


ACCOUNTS = [f"acct-{i:08d}" for i in range(0, 90_000, 2999)] + ["é" * 128, "a/b c?d#e", "x"]


def test_documents_are_the_profiles_of_the_seed() -> None:
    contract = triage_contract()
    with start_telemetry_server(TelemetryConfig(seed=11, **QUIET)) as server:
        answers = get_all(server.url, [path_of(a) for a in ACCOUNTS])
        assert server.stats.served == len(ACCOUNTS)
    for account, (status, doc, _) in zip(ACCOUNTS, answers, strict=True):
        assert status == 200, (account, doc)
        profile = account_profile(11, account)
        assert doc == telemetry_document(profile)
        assert doc["account"] == account
        got = {f.name: f.source.extract(doc) for f in contract.for_service("telemetry")}
        assert got == {k: v for k, v in profile.features().items() if k in got}
    with start_telemetry_server(TelemetryConfig(seed=12, **QUIET)) as other:
        status, doc = get(other.url + path_of(ACCOUNTS[0]))
    assert status == 200 and doc != answers[0][1]
    assert doc == telemetry_document(account_profile(12, ACCOUNTS[0]))


def statuses(config: TelemetryConfig, n: int) -> list[int]:
    with start_telemetry_server(config) as server:
        out = []
        for i in range(n):
            status, body = get(server.url + path_of(f"acct-{i % 7:08d}"))
            if status == 503:
                assert body["error"] == "unavailable" and body["detail"]
            else:
                assert status == 200 and body["account"] == f"acct-{i % 7:08d}"
            out.append(status)
        assert server.stats.failed == out.count(503)
        assert server.stats.served == out.count(200)
    return out


def test_the_failure_rate_is_roughly_honoured_and_seeded() -> None:
    config = TelemetryConfig(latency_ms=0, jitter_ms=0, failure_rate=0.3, seed=5)
    first = statuses(config, 300)
    assert 0.2 <= first.count(503) / 300 <= 0.4
    assert statuses(config, 300) == first
    assert statuses(TelemetryConfig(latency_ms=0, jitter_ms=0, failure_rate=0.3, seed=6), 300) != (
        first
    )
    assert set(statuses(TelemetryConfig(latency_ms=0, jitter_ms=0, failure_rate=1.0), 20)) == {503}
    assert set(statuses(TelemetryConfig(**QUIET), 50)) == {200}


def test_the_latency_is_honoured_without_blocking_other_requests() -> None:
    config = TelemetryConfig(latency_ms=300.0, jitter_ms=0.0, failure_rate=0.0)
    with start_telemetry_server(config) as server:
        started = time.monotonic()
        answers = get_all(server.url, [path_of(f"acct-{i:08d}") for i in range(100)])
        elapsed = time.monotonic() - started
    assert [status for status, _, _ in answers] == [200] * 100
    assert all(took >= 0.29 for _, _, took in answers)
    assert elapsed < 10.0  # one after the other would take 30 s


def test_jitter_keeps_latencies_inside_their_bounds() -> None:
    config = TelemetryConfig(latency_ms=120.0, jitter_ms=80.0, failure_rate=0.0, seed=3)
    with start_telemetry_server(config) as server:
        answers = get_all(server.url, [path_of(f"acct-{i:08d}") for i in range(60)])
    took = [t for _, _, t in answers]
    assert min(took) >= 0.039
    assert max(took) - min(took) > 0.02  # not a constant delay


def test_invalid_accounts_answer_400_at_once_even_when_everything_fails() -> None:
    config = TelemetryConfig(latency_ms=2000.0, jitter_ms=0.0, failure_rate=1.0)
    with start_telemetry_server(config) as server:
        started = time.monotonic()
        for path in ["/v1/telemetry/", "/v1/telemetry", path_of("a" * 257), path_of("é" * 129)]:
            status, body = get(server.url + path)
            assert status == 400, path
            assert body["error"] == "bad_account" and "256" in body["detail"]
        assert get(server.url + "/healthz") == (200, {"status": "ok"})
        assert time.monotonic() - started < 1.5
        assert server.stats.rejected == 4
        status, _ = get(server.url + path_of("é" * 128))  # 256 bytes: valid, delayed, fails
        assert status == 503
        assert time.monotonic() - started >= 2.0


def test_the_server_releases_its_port_when_stopped() -> None:
    server = start_telemetry_server(TelemetryConfig(**QUIET))
    url, port = server.url, server.port
    assert url == f"http://127.0.0.1:{port}" and port > 0
    assert get(url + "/healthz")[0] == 200
    server.stop()
    server.stop()
    assert not server.running()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_a_busy_port_is_an_error() -> None:
    with start_telemetry_server(TelemetryConfig(**QUIET)) as server:
        with pytest.raises(OSError):
            start_telemetry_server(TelemetryConfig(port=server.port, **QUIET))
        assert get(server.url + "/healthz")[0] == 200


@pytest.mark.parametrize(
    "kwargs",
    [
        {"latency_ms": -1.0},
        {"jitter_ms": -1.0},
        {"latency_ms": float("nan")},
        {"failure_rate": 1.5},
        {"failure_rate": -0.1},
        {"port": 70000},
    ],
)
def test_bad_configs_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="telemetry service needs"):
        TelemetryConfig(**kwargs)


def test_the_command_serves_until_ctrl_c_and_summarises() -> None:
    with start_telemetry_process(TelemetryConfig(seed=4, **QUIET)) as proc:
        assert proc.url.startswith("http://127.0.0.1:")
        status, doc = get(proc.url + path_of("acct-00000009"))
        assert status == 200 and doc == telemetry_document(account_profile(4, "acct-00000009"))
        assert get(proc.url + "/v1/telemetry/")[0] == 400
        assert proc.stop() == 0
    assert "1 documents" in proc.output() and "1 bad requests" in proc.output()


def test_the_command_explains_itself_and_refuses_bad_flags() -> None:
    run = [sys.executable, "-m", "streamml.cli", "telemetry", "serve"]
    helped = subprocess.run([*run, "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0
    for flag in ("--host", "--port", "--latency-ms", "--jitter-ms", "--failure-rate", "--seed"):
        assert flag in helped.stdout
    bad = subprocess.run(
        [*run, "--port", "0", "--failure-rate", "2"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "failure_rate in [0, 1]" in bad.stderr
