"""`streamml bench predict`: the prediction flow's throughput, and its latency over Kafka.

Throughput (happy path): every account has a current online value and a fresh telemetry answer
in the state dir, so no request fetches; requests come from a JSON lines file and the flow runs
with the product's defaults (one process unless `--processes`). The run checks itself: every
request is answered exactly once in the prediction store and no feature was fetched.

Latency (`--kafka`): a tansu broker on loopback, the flow reading a requests topic and writing a
predictions topic; requests are sent open loop at a fixed rate, each stamped with its scheduled
send time, and the latency of a request is from that time to the moment its prediction is
consumed (a stall delays every later request and is counted). A second run sends
`--fetch-share` of the requests for accounts with no stored telemetry answer, so they are
fetched from a telemetry service at `--telemetry-latency-ms`; the happy path's p99 is compared
with the first run's and the fetched path's with the telemetry service's own p99.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
from streamml.dataflows.predict import PredictFlowConfig, RequestsConfig
from streamml.onnx_models import bundled_contract, ensure_demo_registry
from streamml.onnx_models.speedtests import account_profile, telemetry_document
from streamml.operators.assembly import extract_values
from streamml.operators.sinks import read_stats
from streamml.state.layout import StateLayout
from streamml.state.ondemand import OnDemandStore, values_service
from streamml.state.predictions import read_predictions
from streamml.state.rolling_store import RollingStateStore, empty_records

from streamml.processes import interrupt
from streamml.runner import run_flow_processes

__all__ = [
    "LatencyResult",
    "SoakResult",
    "ThroughputResult",
    "prepare_state",
    "register",
    "request_lines",
    "run_latency",
    "run_soak",
    "run_throughput",
]

MODEL = "speedtest-triage"
FLOW = "streamml.dataflows.predict:flow"


def account(i: int) -> str:
    """Return the name of warm account `i`."""
    return f"acct-{i:08d}"


def prepare_state(state_dir: Path, accounts: int, now_ms: int, seed: int = 7) -> StateLayout:
    """Give every warm account an online value updated a minute ago and a fresh telemetry answer.

    The answers are stored as the flow stores what it fetches: the answer and its values.
    """
    layout = StateLayout().ensure(state_dir)
    specs = bundled_contract().for_service("telemetry")
    names = [account(i).encode() for i in range(accounts)]
    by_shard: dict[int, list[bytes]] = {}
    for name in names:
        by_shard.setdefault(layout.shard_of(name), []).append(name)
    rng = np.random.default_rng(seed)
    ondemand = OnDemandStore(state_dir)
    for shard, members in by_shard.items():
        store = RollingStateStore(
            StateLayout.shard_dir(state_dir, shard),
            feature=layout.feature_id,
            window=layout.window_buckets,
        )
        records = empty_records(len(members), layout.window_buckets)
        records["max_bucket"] = now_ms // layout.bucket_ms
        records["updated_at"] = now_ms - 60_000
        records["counts"][:, 0] = rng.integers(0, 3000, len(members))
        store.commit(members, records, {})
        store.close()
        docs = [telemetry_document(account_profile(seed, m.decode())) for m in members]
        ondemand.put_many(
            shard,
            "telemetry",
            [(m, now_ms, orjson.dumps(d)) for m, d in zip(members, docs, strict=True)],
        )
        values = [orjson.dumps(extract_values(d, specs)) for d in docs]
        ondemand.put_many(
            shard,
            values_service("telemetry"),
            [(m, now_ms, v) for m, v in zip(members, values, strict=True)],
        )
    ondemand.close()
    return layout


def request_lines(
    n: int, accounts: int, now_ms: int, seed: int = 7, cold_share: float = 0.0, prefix: str = "r"
) -> tuple[list[bytes], set[str]]:
    """Return `n` requests as JSON lines and the ids of those for cold accounts (to fetch)."""
    rng = random.Random(seed)
    lines, cold = [], set()
    for i in range(n):
        rid = f"{prefix}-{i}"
        if rng.random() < cold_share:
            who = f"cold-{prefix}-{i}"
            cold.add(rid)
        else:
            who = account(rng.randrange(accounts))
        context = {
            "download_ratio": round(rng.uniform(0.05, 1.0), 3),
            "upload_ratio": round(rng.uniform(0.05, 1.0), 3),
            "latency_ms": round(rng.uniform(5, 200), 1),
            "packet_loss_pct": round(rng.uniform(0, 5), 2),
        }
        body = {"request_id": rid, "model": MODEL, "account": who, "ts": now_ms, "context": context}
        lines.append(orjson.dumps(body))
    return lines, cold


@dataclass(frozen=True)
class ThroughputResult:
    """One throughput run."""

    requests: int
    wall_s: float
    cpu_s: float
    peak_rss_bytes: int
    counters: dict[str, int] = field(default_factory=dict)

    @property
    def per_second(self) -> float:
        """Requests per second, start-up included."""
        return self.requests / self.wall_s


def _warm(root: Path, name: str, accounts: int, seed: int) -> tuple[int, Path, Path]:
    """Return now (epoch ms), the bundled model's registry and a state dir `name` made warm."""
    now_ms = time.time_ns() // 1_000_000
    registry = root / "models"
    ensure_demo_registry(registry)
    state = root / name
    prepare_state(state, accounts, now_ms, seed)
    return now_ms, registry, state


def _open_loop(n: int, rate: float) -> Iterator[tuple[int, int]]:
    """Yield ``(i, scheduled_ns)`` for `n` sends at `rate`/s, each once its time has come.

    The schedule is fixed in advance (open loop): a late send keeps its scheduled time.
    """
    start = time.time_ns() + 50_000_000
    step = int(1e9 / rate)
    for i in range(n):
        at = start + i * step
        wait = (at - time.time_ns()) / 1e9
        if wait > 0:
            time.sleep(wait)
        yield i, at


def run_throughput(
    root: Path, requests: int, accounts: int, *, processes: int = 1, seed: int = 7
) -> ThroughputResult:
    """Answer `requests` happy-path requests from a file; check every one is answered once."""
    now_ms, registry, state = _warm(root, f"state-{time.time_ns()}", accounts, seed)
    lines, _ = request_lines(requests, accounts, now_ms, seed)
    path = root / "requests.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    config = PredictFlowConfig(
        requests=RequestsConfig(kind="file", paths=(str(path),)),
        state_dir=state,
        registry_dir=registry,
        telemetry_url="http://127.0.0.1:9",
        stats_path=root / "stats.json",
    )
    result = run_flow_processes(
        FLOW, config.to_env(), processes=processes, stats_path=config.stats_path
    )
    if result.returncode != 0:
        raise RuntimeError(f"the prediction flow failed (exit {result.returncode})")
    ids = read_predictions(config.store).column("request_id").to_pylist()
    if len(ids) != requests or len(set(ids)) != requests:
        raise AssertionError(f"{len(ids)} predictions ({len(set(ids))} distinct) for {requests}")
    fetched = sum(v for k, v in result.counters.items() if k.startswith("fetch."))
    if fetched:
        raise AssertionError(f"the happy path fetched: {result.counters}")
    return ThroughputResult(
        requests, result.wall_s, result.cpu_s, result.peak_rss_bytes, result.counters
    )


@dataclass(frozen=True)
class SoakResult:
    """RSS of the flow process as a long happy-path run went on."""

    requests: int
    wall_s: float
    samples: list[tuple[int, int]]
    counters: dict[str, int]

    def rss_at(self, share: float) -> int:
        """Return the RSS (bytes) sampled once `share` of the requests were answered."""
        goal = share * self.requests
        for answered, rss in self.samples:
            if answered >= goal:
                return rss
        return self.samples[-1][1] if self.samples else 0


def run_soak(root: Path, requests: int, accounts: int, seed: int = 7) -> SoakResult:
    """Answer `requests` from a file in one worker, sampling its RSS; check nothing is pending.

    Every request must end (answers + timeouts + dead letters = requests read) and be stored
    once.
    """
    now_ms, registry, state = _warm(root, f"state-soak-{time.time_ns()}", accounts, seed)
    path = root / "soak.jsonl"
    with path.open("wb") as f:
        for start in range(0, requests, 100_000):
            lines, _ = request_lines(
                min(100_000, requests - start), accounts, now_ms, seed + start, prefix=f"s{start}"
            )
            f.write(b"\n".join(lines) + b"\n")
    config = PredictFlowConfig(
        requests=RequestsConfig(kind="file", paths=(str(path),)),
        state_dir=state,
        registry_dir=registry,
        telemetry_url="http://127.0.0.1:9",
        stats_path=root / "stats-soak.json",
    )
    env = {**os.environ, **config.to_env()}
    started = time.time()
    flow = subprocess.Popen([sys.executable, "-P", "-m", "streamml.worker", FLOW], env=env)
    samples: list[tuple[int, int]] = []
    while flow.poll() is None:
        stats = read_stats(config.stats_path)
        answered = 0 if stats is None else stats["counters"].get("answers", 0)
        samples.append((answered, _rss(flow.pid)))
        time.sleep(0.5)
    wall = time.time() - started
    if flow.returncode != 0:
        raise RuntimeError(f"the prediction flow failed (exit {flow.returncode})")
    counters = (read_stats(config.stats_path) or {}).get("counters", {})
    ended = counters.get("answers", 0) + counters.get("dead", 0)
    ended += sum(v for k, v in counters.items() if k.startswith("timeouts."))
    if ended != requests or counters.get("requests", 0) != requests:
        raise AssertionError(f"{ended} of {requests} requests ended: {counters}")
    ids = read_predictions(config.store).column("request_id")
    if len(ids) != requests or len(ids.unique()) != requests:
        raise AssertionError(f"{len(ids)} stored predictions for {requests} requests")
    return SoakResult(requests, wall, samples, counters)


@dataclass(frozen=True)
class LatencyResult:
    """Latencies (ms) of one open-loop run over Kafka, by path."""

    rate: float
    sent: int
    happy_ms: list[float]
    fetched_ms: list[float]
    telemetry_ms: list[float]
    rss_bytes: list[int]
    operator_happy_ms: list[float] = field(default_factory=list)
    operator_fetched_ms: list[float] = field(default_factory=list)
    """In-operator time (arrival at the shard to scored), from the prediction store."""

    @staticmethod
    def quantiles(values: list[float]) -> dict[str, float]:
        """Return p50, p95, p99 and max of `values` (ms)."""
        if not values:
            return {}
        q = np.percentile(np.asarray(values), [50, 95, 99, 100])
        return {"p50": q[0], "p95": q[1], "p99": q[2], "max": q[3]}


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_latency(
    root: Path,
    bootstrap: str,
    *,
    rate: float,
    seconds: float,
    accounts: int,
    fetch_share: float,
    telemetry_url: str,
    tag: str,
    seed: int = 7,
) -> LatencyResult:
    """Send requests at `rate`/s for `seconds` to a running flow; measure each one's latency."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from streamml.operators.kafka import ensure_topic

    now_ms, registry, state = _warm(root, f"state-{tag}", accounts, seed)
    n = int(rate * seconds)
    lines, cold = request_lines(n, accounts, now_ms, seed, fetch_share, prefix=tag)
    topic_in, topic_out = f"requests-{tag}", f"predictions-{tag}"
    ensure_topic(bootstrap, topic_in, partitions=1)
    ensure_topic(bootstrap, topic_out, partitions=1)
    config = PredictFlowConfig(
        requests=RequestsConfig(kind="kafka"),
        state_dir=state,
        registry_dir=registry,
        telemetry_url=telemetry_url,
        stats_path=root / f"stats-{tag}.json",
        kafka_env=(
            ("STREAMML_KAFKA_BROKERS", bootstrap),
            ("STREAMML_KAFKA_TOPIC", topic_in),
            ("STREAMML_KAFKA_START", "earliest"),
            ("STREAMML_KAFKA_PREDICTIONS_TOPIC", topic_out),
        ),
    )
    env = {**os.environ, **config.to_env()}
    log = tempfile.TemporaryFile()  # noqa: SIM115
    flow = subprocess.Popen(
        [sys.executable, "-P", "-m", "streamml.worker", FLOW], env=env, stdout=log, stderr=log
    )
    received: dict[str, int] = {}
    done = threading.Event()

    def consume() -> None:
        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, fetch_max_wait_ms=5, enable_auto_commit=False
        )
        consumer.assign([TopicPartition(topic_out, 0)])
        consumer.seek_to_beginning()
        while not done.is_set():
            for records in consumer.poll(timeout_ms=20).values():
                now = time.time_ns()
                for r in records:
                    rid = dict(r.headers).get("request_id", b"").decode()
                    received.setdefault(rid, now)
        consumer.close()

    reader = threading.Thread(target=consume, daemon=True)
    reader.start()
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1)
    try:
        deadline = time.time() + 120
        while read_stats(config.stats_path) is None and time.time() < deadline:
            if flow.poll() is not None:
                raise RuntimeError("the prediction flow stopped while starting")
            time.sleep(0.05)
        time.sleep(2.0)
        scheduled: dict[str, int] = {}
        rss: list[int] = []
        for i, at in _open_loop(len(lines), rate):
            line = lines[i]
            rid = orjson.loads(line)["request_id"]
            scheduled[rid] = at
            producer.send(topic_in, value=line, key=rid.encode())
            if i % 1000 == 0:
                producer.flush()
                rss.append(_rss(flow.pid))
        producer.flush()
        deadline = time.time() + 60
        while len(received) < n and time.time() < deadline:
            time.sleep(0.05)
        rss.append(_rss(flow.pid))
    finally:
        done.set()
        producer.close()
        interrupt(flow, 30)
    missing = [rid for rid in scheduled if rid not in received]
    if missing:
        log.seek(0)
        sys.stderr.write(log.read()[-4000:].decode(errors="replace"))
        raise AssertionError(
            f"{len(missing)} of {n} requests got no prediction (e.g. {missing[:3]})"
        )
    happy = [(received[r] - t) / 1e6 for r, t in scheduled.items() if r not in cold]
    fetched = [(received[r] - t) / 1e6 for r, t in scheduled.items() if r in cold]
    rows = read_predictions(config.store).select(["request_id", "latency"]).to_pylist()
    telemetry = [r["latency"]["fetch_ms"] for r in rows if r["request_id"] in cold]
    op_happy = [r["latency"]["total_ms"] for r in rows if r["request_id"] not in cold]
    op_fetched = [r["latency"]["total_ms"] for r in rows if r["request_id"] in cold]
    return LatencyResult(rate, n, happy, fetched, telemetry, rss, op_happy, op_fetched)


def broker_hop_ms(bootstrap: str, rate: float, n: int) -> list[float]:
    """Return the produce-to-consume latency (ms) of `n` records sent at `rate`/s, open loop.

    One hop through the broker with the same client settings as the latency runs: the floor
    under a request's two hops (request in, prediction out).
    """
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from streamml.operators.kafka import ensure_topic

    topic = f"hop-{time.time_ns()}"
    ensure_topic(bootstrap, topic, partitions=1)
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, fetch_max_wait_ms=5, enable_auto_commit=False
    )
    consumer.assign([TopicPartition(topic, 0)])
    consumer.seek_to_beginning()
    sent: dict[bytes, int] = {}
    latencies: list[float] = []

    def receive() -> None:
        deadline = time.time() + n / rate + 30
        while len(latencies) < n and time.time() < deadline:
            for records in consumer.poll(timeout_ms=20).values():
                now = time.time_ns()
                latencies.extend((now - sent[r.value]) / 1e6 for r in records)

    reader = threading.Thread(target=receive, daemon=True)
    reader.start()
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, acks=1)
    for i, at in _open_loop(n, rate):
        key = str(i).encode()
        sent[key] = at
        producer.send(topic, value=key)
    producer.flush()
    reader.join()
    producer.close()
    consumer.close()
    return latencies


def _fmt(q: dict[str, float]) -> str:
    if not q:
        return "-"
    return "  ".join(f"{k} {v:7.2f}" for k, v in q.items())


def _cmd(args: argparse.Namespace) -> int:
    from streamml.console import format_table

    root = Path(tempfile.mkdtemp(prefix="streamml-bench-predict-"))
    print(f"working dir {root}")
    runs = []
    for i in range(args.repeat):
        r = run_throughput(root, args.requests, args.accounts, processes=args.processes)
        runs.append(r)
        print(
            f"throughput run {i + 1}: {r.requests:,} requests in {r.wall_s:.2f} s "
            f"(start-up included): {r.per_second:,.0f} requests/s, CPU {r.cpu_s:.1f} s, "
            f"peak RSS {r.peak_rss_bytes / 2**20:.0f} MiB"
        )
    rates = [r.per_second for r in runs]
    print(
        f"median {statistics.median(rates):,.0f} requests/s (min {min(rates):,.0f}, "
        f"max {max(rates):,.0f}) over {len(rates)} runs"
    )
    if args.soak:
        soak = run_soak(root, args.soak, args.accounts)
        marks = "  ".join(
            f"{share:.0%}: {soak.rss_at(share) / 2**20:.0f} MiB" for share in (0.1, 0.5, 1.0)
        )
        print(
            f"soak: {soak.requests:,} requests in {soak.wall_s:.1f} s, every one ended and stored "
            f"once; flow RSS when answered {marks}"
        )
    if not args.kafka:
        return 0
    from streamml.broker import start_broker
    from streamml.telemetry import TelemetryConfig
    from streamml.telemetry_process import start_telemetry_process

    with (
        start_broker() as broker,
        start_telemetry_process(
            TelemetryConfig(
                latency_ms=args.telemetry_latency_ms,
                jitter_ms=args.telemetry_latency_ms / 2,
                failure_rate=0.0,
            )
        ) as telemetry,
    ):
        common = {
            "rate": args.rate,
            "seconds": args.seconds,
            "accounts": args.accounts,
            "telemetry_url": telemetry.url,
        }
        hop = broker_hop_ms(broker.bootstrap, args.rate, int(args.rate * 10))
        base = run_latency(root, broker.bootstrap, fetch_share=0.0, tag="nofetch", **common)
        mixed = run_latency(
            root, broker.bootstrap, fetch_share=args.fetch_share, tag="fetch", **common
        )
    q = LatencyResult.quantiles
    rows = [
        ("no fetches: every request", _fmt(q(base.happy_ms))),
        (f"{args.fetch_share:.0%} fetched: happy path", _fmt(q(mixed.happy_ms))),
        (f"{args.fetch_share:.0%} fetched: fetched path", _fmt(q(mixed.fetched_ms))),
        ("telemetry calls seen by the flow", _fmt(q(mixed.telemetry_ms))),
        ("broker alone: one hop, same rate", _fmt(q(hop))),
        ("in the operator, no fetches", _fmt(q(base.operator_happy_ms))),
        ("in the operator, happy path", _fmt(q(mixed.operator_happy_ms))),
        ("in the operator, fetched path", _fmt(q(mixed.operator_fetched_ms))),
    ]
    print(f"end-to-end latency over Kafka, open loop at {args.rate:,.0f} requests/s (ms):")
    print(format_table(rows, headers=["path", "latency ms"]))
    rss = [f"{b / 2**20:.0f}" for b in base.rss_bytes[:: max(1, len(base.rss_bytes) // 6)]]
    print(f"flow RSS MiB during the no-fetch run: {' '.join(rss)}")
    return 0


def register(bench_sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `streamml bench predict`."""
    p = bench_sub.add_parser(
        "predict",
        help="prediction flow: happy-path requests/s; with --kafka, open-loop latency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--requests", type=int, default=200_000, help="requests per throughput run")
    p.add_argument("--accounts", type=int, default=100_000, help="warm accounts")
    p.add_argument("--processes", type=int, default=1, help="worker processes")
    p.add_argument("--repeat", type=int, default=3, help="throughput runs (median reported)")
    p.add_argument("--soak", type=int, default=0, help="also answer N requests, sampling RSS")
    p.add_argument("--kafka", action="store_true", help="also measure latency over Kafka")
    p.add_argument("--rate", type=float, default=1000.0, help="offered requests/s (open loop)")
    p.add_argument("--seconds", type=float, default=30.0, help="length of each latency run")
    p.add_argument("--fetch-share", type=float, default=0.1, help="share of requests fetched")
    p.add_argument("--telemetry-latency-ms", type=float, default=20.0, help="service latency")
    p.set_defaults(func=_cmd)
