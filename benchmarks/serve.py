"""`streamml bench serve`: the REST service's latency under open-loop load at fixed rates.

The service runs in a child process (one worker unless `--workers`, the product's defaults,
bearer-token authentication on); this process is the load generator: one uvloop event loop,
up to `--connections` keep-alive
HTTP/1.1 connections, requests written and responses parsed by hand (`_Connection`: a
general client such as aiohttp spends 3-5 times the CPU per request, which on 2 shared cores
is taken from the server being measured). Request i is scheduled at ``start + i /
rate`` whatever happened before (open loop), and its latency runs from that scheduled time to
the end of its response, so a stall delays and counts against every later request. Server and
load generator share the machine's cores (2 here): the figures include that contention.

Every warm account has an online value and a fresh telemetry answer (`bench predict`'s
`prepare_state`), so predictions are the happy path (nothing fetched). The run checks itself
inside the timed run: every response is 200 and its body is the expected one (the account's
stored value; a prediction for the request's id). Runs, each `--repeat` times (median and
spread reported, with the CPU time per request of the service's processes and of the load
generator): GET /v1/features at `--features-rate`, then at each `--sweep` rate to find
the highest with p99 <= 5 ms; POST /v1/predictions at `--predict-rate`; and the online store's
visibility delay (a write to a shard until the service returns it).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import uvloop
from streamml.benchmarks.predict import account, prepare_state
from streamml.onnx_models import ensure_demo_registry
from streamml.state.layout import StateLayout
from streamml.state.online import OnlineStore
from streamml.state.rolling_store import RollingStateStore, empty_records

from streamml.server import ServeConfig, add_token, start_server_process

__all__ = [
    "LoadResult",
    "measure_visibility",
    "open_loop",
    "process_tree_cpu_s",
    "register",
    "run_bench",
]

MODEL = "speedtest-triage"
FEATURE = "signal_errors_24h"


@dataclass(frozen=True)
class LoadResult:
    """One open-loop run: offered rate, requests, latency percentiles (ms), failures."""

    name: str
    rate: float
    requests: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    achieved_rate: float
    failures: int


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: one request at a time, responses with Content-Length."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buf[:end]).lower()
        at = head.find(b"content-length:")
        length = int(head[at + 15 : head.find(b"\r\n", at) if b"\r\n" in head[at:] else None])
        if len(buf) < end + 4 + length:
            return
        status = int(head[9:12])
        body = bytes(buf[end + 4 : end + 4 + length])
        del buf[: end + 4 + length]
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((status, body))

    def connection_lost(self, exc) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection lost"))

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        self.waiter = asyncio.get_running_loop().create_future()
        assert self.transport is not None
        self.transport.write(raw)
        return await self.waiter


def _raw_request(method: str, path: str, body: bytes | None, auth: bytes) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nhost: bench\r\n".encode() + auth
    if body is None:
        return head + b"\r\n"
    return head + b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body) + body


async def _run(
    url: str,
    token: str,
    rate: float,
    seconds: float,
    connections: int,
    make,
    check,
) -> tuple[np.ndarray, int, float]:
    n = int(rate * seconds)
    lat = np.zeros(n)
    failures = 0
    auth = f"authorization: Bearer {token}\r\n".encode()
    host, port = url.removeprefix("http://").split(":")
    loop = asyncio.get_running_loop()
    pool: asyncio.Queue[_Connection] = asyncio.Queue()
    conns = []
    for _ in range(connections):
        _, conn = await loop.create_connection(_Connection, host, int(port))
        conns.append(conn)
        pool.put_nowait(conn)

    async def one(i: int, scheduled: float) -> None:
        nonlocal failures
        method, path, body = make(i)
        raw = _raw_request(method, path, body, auth)
        conn = await pool.get()
        try:
            status, payload = await conn.request(raw)
            ok = status == 200 and check(i, payload)
        except ConnectionError:
            ok = False
        pool.put_nowait(conn)
        lat[i] = time.perf_counter() - scheduled
        if not ok:
            failures += 1

    tasks = []
    start = time.perf_counter() + 0.01
    i = 0
    while i < n:
        now = time.perf_counter()
        while i < n and start + i / rate <= now:
            tasks.append(asyncio.create_task(one(i, start + i / rate)))
            i += 1
        if i < n:
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()
    return lat * 1000.0, failures, n / elapsed


def open_loop(
    url: str,
    token: str,
    name: str,
    rate: float,
    seconds: float,
    connections: int,
    make,
    check,
) -> LoadResult:
    """Send `rate` requests/s for `seconds` (request i made by `make(i)`, body checked)."""
    gc.collect()
    gc.freeze()  # the load generator's own collections would count as service latency
    run = _run(url, token, rate, seconds, connections, make, check)
    lat, failures, achieved = uvloop.run(run)
    return LoadResult(
        name,
        rate,
        len(lat),
        float(np.percentile(lat, 50)),
        float(np.percentile(lat, 99)),
        float(lat.max()),
        achieved,
        failures,
    )


def _features_load(expected: dict[str, int], accounts: int, seed: int):
    rng = random.Random(seed)
    order = [account(rng.randrange(accounts)) for _ in range(1 << 16)]

    def make(i: int):
        return "GET", f"/v1/features/{order[i & 0xFFFF]}", None

    def check(i: int, payload: bytes) -> bool:
        got = orjson.loads(payload)["features"][FEATURE]
        return got["value"] == expected[order[i & 0xFFFF]]

    return make, check


def _predict_load(accounts: int, seed: int, prefix: str):
    rng = random.Random(seed)
    contexts = [
        {
            "download_ratio": round(rng.uniform(0.05, 1.0), 3),
            "upload_ratio": round(rng.uniform(0.05, 1.0), 3),
            "latency_ms": round(rng.uniform(5, 200), 1),
            "packet_loss_pct": round(rng.uniform(0, 5), 2),
        }
        for _ in range(1024)
    ]

    def make(i: int):
        body = {
            "request_id": f"{prefix}-{i}",
            "model": MODEL,
            "account": account(rng.randrange(accounts)),
            "context": contexts[i & 1023],
        }
        return "POST", "/v1/predictions", orjson.dumps(body)

    def check(i: int, payload: bytes) -> bool:
        got = orjson.loads(payload)
        return got["request_id"] == f"{prefix}-{i}" and all(  # stored values, none fetched
            f["status"] in ("fresh", "stale") for f in got["features"].values()
        )

    return make, check


def measure_visibility(url: str, token: str, state: Path, writes: int = 50) -> list[float]:
    """Write a new value `writes` times; return ms until the service returned each one."""
    import urllib.request

    layout = StateLayout.read(state)
    assert layout is not None
    key = b"visibility-probe"
    store = RollingStateStore(
        StateLayout.shard_dir(state, layout.shard_of(key)),
        feature=layout.feature_id,
        window=layout.window_buckets,
    )
    now = time.time_ns() // 1_000_000
    delays = []
    try:
        for k in range(1, writes + 1):
            rec = empty_records(1, layout.window_buckets)
            rec["max_bucket"] = now // layout.bucket_ms
            rec["updated_at"] = now
            rec["counts"][0][0] = k
            store.commit([key], rec, {"visibility": k})
            written = time.perf_counter()
            while time.perf_counter() - written < 5:
                req = urllib.request.Request(
                    f"{url}/v1/features/{key.decode()}",
                    headers={"authorization": f"Bearer {token}"},
                )
                with urllib.request.urlopen(req) as resp:
                    value = orjson.loads(resp.read())["features"][FEATURE]["value"]
                if value == k:
                    delays.append((time.perf_counter() - written) * 1000)
                    break
                time.sleep(0.001)
            time.sleep(random.uniform(0, 0.05))
    finally:
        store.close()
    return delays


def process_tree_cpu_s(pid: int) -> float:
    """Return the CPU seconds (user + system) used so far by process `pid` and its descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += times.get(p, 0.0)
        todo += [c for c, parent in parents.items() if parent == p]
    return total


def _summary(results: list[LoadResult]) -> dict:
    p50 = [r.p50_ms for r in results]
    p99 = [r.p99_ms for r in results]
    return {
        "name": results[0].name,
        "rate": results[0].rate,
        "requests": results[0].requests,
        "p50": statistics.median(p50),
        "p50_range": (min(p50), max(p50)),
        "p99": statistics.median(p99),
        "p99_range": (min(p99), max(p99)),
        "max": max(r.max_ms for r in results),
        "achieved": statistics.median(r.achieved_rate for r in results),
        "failures": sum(r.failures for r in results),
    }


def _stack(http: str, args: argparse.Namespace, root: Path, token: str, expected) -> list[dict]:
    """Start the service on the `http` server and run every load against it."""
    rows: list[dict] = []
    config = ServeConfig(
        state_dir=root / "state",
        registry_dir=root / "models",
        tokens=root / "tokens.json",
        port=0,
        workers=args.workers,
        http=http,
        rate_per_s=1e9,
        burst=1_000_000_000,
    )

    def repeat(name: str, rate: float, loads) -> dict:
        server_cpu, client_cpu = process_tree_cpu_s(server.pid), time.process_time()
        results = [
            open_loop(url, token, name, rate, args.seconds, args.connections, *load)
            for load in loads
        ]
        summary = _summary(results)
        n = sum(r.requests for r in results)
        summary["server_us"] = (process_tree_cpu_s(server.pid) - server_cpu) / n * 1e6
        summary["client_us"] = (time.process_time() - client_cpu) / n * 1e6
        return summary

    with start_server_process(config) as server:
        url = server.url
        features = _features_load(expected, args.accounts, 1)
        repeat(f"{http} warm-up", 500, [features])
        rows.append(
            repeat(f"{http} GET /v1/features", args.features_rate, [features] * args.repeat)
        )
        for rate in sorted(args.sweep):
            row = repeat(f"{http} GET /v1/features", rate, [features] * args.repeat)
            rows.append(row)
            if row["p99"] > 15.0 and rate > args.features_rate:
                break
        warm = [_predict_load(args.accounts, 0, f"{http}-warm")]
        repeat(f"{http} warm-up", 200, warm)
        loads = [_predict_load(args.accounts, k, f"{http}-{k}") for k in range(1, args.repeat + 1)]
        rows.append(repeat(f"{http} POST /v1/predictions", args.predict_rate, loads))
        if args.visibility:
            delays = measure_visibility(url, token, root / "state")
            rows.append(
                {
                    "name": f"{http} visibility (write -> read)",
                    "rate": 0,
                    "requests": len(delays),
                    "p50": statistics.median(delays),
                    "p50_range": (min(delays), max(delays)),
                    "p99": float(np.percentile(delays, 99)),
                    "p99_range": (0, 0),
                    "max": max(delays),
                    "achieved": 0,
                    "failures": 0,
                }
            )
    return rows


def run_bench(args: argparse.Namespace) -> list[dict]:
    """Prepare state and registry, start the service, run every load; return the summaries."""
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="streamml-bench-serve-") as tmp:
        root = Path(tmp)
        now = time.time_ns() // 1_000_000
        ensure_demo_registry(root / "models")
        prepare_state(root / "state", args.accounts, now)
        online = OnlineStore(root / "state")
        names = [account(i) for i in range(args.accounts)]
        reads = online.get_features(names, as_of=None)
        expected = {n: r[FEATURE].value for n, r in zip(names, reads, strict=True)}
        online.close()
        token = add_token(root / "tokens.json", "bench", ["admin"])
        for http in args.http:
            rows += _stack(http, args, root, token, expected)
            _print(rows)
    return rows


def _print(rows: list[dict]) -> None:
    print(
        f"{'run':44} {'rate':>6} {'reqs':>7} {'p50 ms (range)':>20} {'p99 ms (range)':>20} "
        f"{'max':>7} {'got/s':>7} {'fail':>5} {'srv us':>7} {'gen us':>7}"
    )
    for r in rows:
        p50 = f"{r['p50']:.2f} ({r['p50_range'][0]:.2f}-{r['p50_range'][1]:.2f})"
        p99 = f"{r['p99']:.2f} ({r['p99_range'][0]:.2f}-{r['p99_range'][1]:.2f})"
        print(
            f"{r['name']:44} {r['rate']:6.0f} {r['requests']:7d} {p50:>20} {p99:>20} "
            f"{r['max']:7.1f} {r['achieved']:7.0f} {r['failures']:5d} "
            f"{r.get('server_us', 0):7.0f} {r.get('client_us', 0):7.0f}",
            flush=True,
        )


def _cmd(args: argparse.Namespace) -> int:
    rows = run_bench(args)
    return 1 if any(r["failures"] for r in rows) else 0


def register(bench_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `streamml bench serve`."""
    p = bench_sub.add_parser(
        "serve",
        help="REST service: open-loop latency of features and predictions",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--http", nargs="+", choices=["uvicorn", "granian"], default=["granian"])
    p.add_argument("--workers", type=int, default=1, help="service worker processes")
    p.add_argument("--accounts", type=int, default=10_000, help="warm accounts")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each run")
    p.add_argument("--repeat", type=int, default=3, help="runs per rate (median reported)")
    p.add_argument("--connections", type=int, default=64, help="client keep-alive connections")
    p.add_argument("--features-rate", type=float, default=2000.0, help="GET /v1/features rate")
    p.add_argument(
        "--sweep",
        type=float,
        nargs="*",
        default=[500.0, 1000.0, 1500.0, 2500.0, 3000.0, 4000.0, 5000.0],
        help="further feature rates, to find the highest with p99 <= 5 ms (stops above "
        "--features-rate once p99 > 15 ms)",
    )
    p.add_argument("--predict-rate", type=float, default=1000.0, help="POST /v1/predictions rate")
    p.add_argument("--no-visibility", dest="visibility", action="store_false")
    p.set_defaults(func=_cmd)
