"""Crash recovery: kill -9 the flow at random moments, resume, and lose or double nothing."""

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import orjson
from streamml.dataflows.error_count import ErrorCountConfig, SourceConfig
from streamml.operators.recovery_state import kept_snapshot_positions
from streamml.operators.sources import GeneratorConfig
from streamml.state.history import read_history
from streamml.state.layout import StateLayout
from streamml.state.rolling_store import RollingStateStore

from streamml.generate import write_events
from streamml.recovery import ensure_recovery_dir, recovery_args
from streamml.runner import free_ports

ROOT = Path(__file__).resolve().parents[2]
KILLS = 5
# Kill moments, seconds after the flow starts, taken in turn: before the first snapshot (1 s),
# then soon after the first one is committed. A run resumes from its last committed snapshot, so
# five kills advance it by about two snapshots of input and the input outlasts them. The file
# source reads 16 MiB chunks, which delays its first commit; Kafka batches are small.
FILE_KILL_WINDOWS = [(0.0, 0.3), (1.0, 1.5)]
KAFKA_KILL_WINDOWS = [(0.0, 0.2), (0.9, 1.3)]
# Two processes, ten kills. With the file source (read in 1 MiB chunks here) two processes
# commit their first snapshot about 1.7 s after reading starts, then about every second, and
# read 3M events in about 4 s: one kill comes after a snapshot or two, the others soon after
# reading starts, before the run commits anything, so the later ones interrupt runs that are
# emitting again what earlier runs applied. With Kafka the first commit comes within about
# 0.3 s: a fourth of the kills come after a few snapshots.
# A window starting at AFTER_SNAPSHOT seconds or later also waits for a committed snapshot, so
# however slow the machine, some restart resumes from one.
AFTER_SNAPSHOT = 0.5
TWO_PROCESS_KILLS = 10
TWO_PROCESS_FILE_WINDOWS = [(0.0, 0.3)] * 4 + [(1.7, 2.2)] + [(0.0, 0.3)] * 5
TWO_PROCESS_KAFKA_WINDOWS = [(0.0, 0.2), (0.0, 0.2), (0.0, 0.2), (0.6, 1.0)]


def flow_cmd(extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "bytewax.run", "streamml.dataflows.error_count:flow", *extra]


def env_for(config: ErrorCountConfig) -> dict[str, str]:
    return {**os.environ, **config.to_env()}


def config_for(tmp: Path, name: str, source: SourceConfig, recovery: bool, kafka_env=()):
    return ErrorCountConfig(
        source=source,
        state_dir=tmp / name / "state",
        layout=StateLayout(shards=4),
        threshold=300,
        alerts_out=tmp / name / "alerts.jsonl",
        history_dir=tmp / name / "history",
        stats_path=tmp / name / "stats.json",
        recovery_dir=tmp / name / "recovery" if recovery else None,
        kafka_env=kafka_env,
    )


def run_clean(config: ErrorCountConfig) -> None:
    subprocess.run(flow_cmd([]), env=env_for(config), check=True, timeout=600)


def started(stats: Path) -> bool:
    """Whether the flow has read something (the stats file exists from the start)."""
    try:
        return orjson.loads(stats.read_bytes())["counters"].get("read", 0) > 0
    except (FileNotFoundError, orjson.JSONDecodeError):
        return False


def start_flow(config: ErrorCountConfig, args: list[str], processes: int) -> subprocess.Popen:
    """Start the flow as `processes` cooperating workers in a new process group.

    One worker runs as the group leader itself; several run under a launcher that leads the
    group, so killing the group kills every worker at the same moment.
    """
    if processes == 1:
        cmd = flow_cmd(args)
    else:
        addresses = ";".join(f"127.0.0.1:{p}" for p in free_ports(processes))
        cmd = [sys.executable, "-c", LAUNCHER, RUNNER, addresses, str(processes), *args]
    return subprocess.Popen(cmd, env=env_for(config), start_new_session=True)


RUNNER = "bytewax.run"
"""The module the launcher runs each worker with (`streamml.worker` tells each its process id)."""

LAUNCHER = """
import subprocess, sys, time
runner, addresses, n, args = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
cmd = [sys.executable, "-m", runner, "streamml.dataflows.error_count:flow", *args]
procs = [subprocess.Popen([*cmd, "-i", str(i), "-a", addresses]) for i in range(n)]
while any(p.poll() is None for p in procs):
    if any(p.returncode for p in procs):
        for p in procs:
            if p.poll() is None:
                p.kill()
    time.sleep(0.05)
sys.exit(next((p.returncode for p in procs if p.returncode), 0))
"""
"""Runs the workers of one flow and ends with the first failing exit code (the others killed)."""


def group_members(pgid: int) -> list[int]:
    """Return the live (not zombie) processes of process group `pgid`."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            live.append(int(stat.parent.name))
    return live


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL every process of the flow's group, then wait until none of them is left."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 30
    while group_members(proc.pid):
        assert time.time() < deadline, f"orphans left: {group_members(proc.pid)}"
        time.sleep(0.05)


def snapshotted(recovery_dir: Path) -> bool:
    """Whether a restart would resume from a snapshot: every recovery partition has committed
    an epoch, and the flow's source has a snapshot."""
    parts = sorted(recovery_dir.glob("part-*.sqlite3"))
    if not parts:
        return False
    for part in parts:
        try:
            with sqlite3.connect(f"file:{part}?mode=ro", uri=True, timeout=1.0) as db:
                (epoch,) = db.execute("SELECT max(commit_epoch) FROM commits").fetchone()
        except sqlite3.Error:
            return False
        if epoch is None or epoch < 1:
            return False
    return bool(kept_snapshot_positions(recovery_dir, "error_count.source"))


def run_with_kills(
    config: ErrorCountConfig,
    seed: int,
    windows: list[tuple[float, float]],
    *,
    kills_wanted: int = KILLS,
    processes: int = 1,
) -> int:
    """Kill the flow `kills_wanted` times, then let it end; return the number of kills.

    Each kill comes at a random moment of its attempt's window (seconds after the flow starts
    reading); a window starting at AFTER_SNAPSHOT or later also waits for the source's first
    snapshot, so some restart resumes from a snapshot however slow the machine. With several
    processes the whole group is killed at once.
    """
    rng = random.Random(seed)
    rdir = config.recovery_dir
    ensure_recovery_dir(rdir)
    args = recovery_args(rdir, 1)
    kills = 0
    for _attempt in range(kills_wanted + 40):
        stats = config.stats_path
        if stats.exists():
            stats.unlink()
        proc = start_flow(config, args, processes)
        if kills < kills_wanted:
            deadline = time.time() + 120
            while not started(stats) and proc.poll() is None and time.time() < deadline:
                time.sleep(0.01)
            window = windows[kills % len(windows)]
            time.sleep(rng.uniform(*window))
            while window[0] >= AFTER_SNAPSHOT and not snapshotted(rdir) and proc.poll() is None:
                assert time.time() < deadline
                time.sleep(0.05)
            if proc.poll() is None:
                kill_group(proc)
                kills += 1
                continue
        assert proc.wait(timeout=600) == 0
        assert not group_members(proc.pid)
        return kills
    raise AssertionError("the flow did not finish")


def final_state(config: ErrorCountConfig):
    records = {}
    for shard in range(config.layout.shards):
        store = RollingStateStore(
            StateLayout.shard_dir(config.state_dir, shard), feature=1, window=24, read_only=True
        )
        for account, rec in store.iter_records():
            records[account] = (
                int(rec["max_bucket"]),
                int(rec["updated_at"]),
                int(rec["flags"]),
                tuple(rec["counts"].tolist()),
            )
        store.close()
    return records


def alerts(config: ErrorCountConfig) -> list[str]:
    return [orjson.loads(x)["id"] for x in config.alerts_out.read_bytes().splitlines()]


def history(config: ErrorCountConfig):
    """The history rows (account, event time, value), sorted, as one Arrow table."""
    columns = ["account", "event_time", "value"]
    t = read_history(config.history_dir).select(columns)
    return t.sort_by([(c, "ascending") for c in columns]).combine_chunks()


def assert_same(clean: ErrorCountConfig, crashed: ErrorCountConfig) -> None:
    a_clean, a_crashed = alerts(clean), alerts(crashed)
    assert a_clean, "the input should raise alerts"
    assert sorted(a_crashed) == sorted(a_clean)  # exactly once in the file: no repeats
    s_clean, s_crashed = final_state(clean), final_state(crashed)
    assert len(s_clean) > 100
    assert s_crashed == s_clean
    h_clean, h_crashed = history(clean), history(crashed)
    assert h_crashed.num_rows == h_clean.num_rows
    assert h_crashed.equals(h_clean)


def test_file_source_survives_kill_9(tmp_path):
    [path] = write_events(
        tmp_path / "errors.csv",
        GeneratorConfig(events=5_000_000, accounts=2_000, seed=3),
        fmt="csv",
        junk_rate=0.0001,
    )
    source = SourceConfig(kind="file", paths=(str(path),))
    clean = config_for(tmp_path, "clean", source, recovery=False)
    run_clean(clean)
    crashed = config_for(tmp_path, "crashed", source, recovery=True)
    kills = run_with_kills(crashed, seed=42, windows=FILE_KILL_WINDOWS)
    assert kills >= KILLS
    assert_same(clean, crashed)
    # The last run resumed from a snapshot, not from the start, and found state already applied.
    last = orjson.loads(crashed.stats_path.read_bytes())["counters"]
    total = orjson.loads(clean.stats_path.read_bytes())["counters"]["read"]
    assert last.get("read", 0) < total


def fill_topic(bootstrap: str, topic: str, gen: GeneratorConfig) -> int:
    """Produce the generated events to `topic` keyed by account; return how many.

    With confluent-kafka installed it produces (about ten times faster than kafka-python, whose
    producer made filling the topic most of these tests' time), with Kafka's default key
    partitioner (murmur2) either way.
    """
    from streamml.operators.sources import generate_events

    events = generate_events(gen, 0)
    pairs = zip(events.accounts.to_pylist(), events.ts.tolist(), strict=True)
    try:
        from confluent_kafka import Producer
    except ImportError:
        from kafka import KafkaProducer

        producer = KafkaProducer(
            bootstrap_servers=bootstrap, acks="all", linger_ms=20, batch_size=1 << 20
        )
        for account, ts in pairs:
            producer.send(topic, key=account, value=b'{"account": "%s", "ts": %d}' % (account, ts))
        producer.flush()
        producer.close()
        return len(events.ts)
    failed = []
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "linger.ms": 20,
            "partitioner": "murmur2_random",
            "queue.buffering.max.messages": 1_000_000,
            "delivery.report.only.error": True,
            "on_delivery": lambda err, _msg: failed.append(err),
        }
    )
    for account, ts in pairs:
        value = b'{"account": "%s", "ts": %d}' % (account, ts)
        while True:
            try:
                producer.produce(topic, value=value, key=account)
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0
    assert not failed, failed[:3]
    return len(events.ts)


def kafka_configs(
    tmp_path: Path, bootstrap: str, topic: str, make_topic, client: str = "kafka-python"
):
    """Configs of a clean run and of a run with recovery, each with its own alerts topic."""

    # With its default 100k-record batches the confluent reader ends the topic before the later
    # kill windows; small batches keep it reading (and snapshotting) long enough to be killed.
    batch = (("STREAMML_KAFKA_BATCH_SIZE", "1000"),) if client == "confluent" else ()

    def kafka_env(alerts_topic: str):
        return (
            ("STREAMML_KAFKA_ALERTS_TOPIC", alerts_topic),
            *batch,
            ("STREAMML_KAFKA_BROKERS", bootstrap),
            ("STREAMML_KAFKA_CLIENT", client),
            ("STREAMML_KAFKA_STOP_AT_END", "1"),
            ("STREAMML_KAFKA_TOPIC", topic),
        )

    source = SourceConfig(kind="kafka")
    clean = config_for(tmp_path, "clean", source, False, kafka_env(make_topic(1)))
    crashed = config_for(tmp_path, "crashed", source, True, kafka_env(make_topic(1)))
    return clean, crashed


def assert_kafka_alerts(bootstrap: str, clean: ErrorCountConfig, crashed: ErrorCountConfig):
    """The alerts topic is written at least once: readers drop repeats by id."""
    from tests.dataflows.test_error_count_kafka import read_topic

    topic = dict(crashed.kafka_env)["STREAMML_KAFKA_ALERTS_TOPIC"]
    ids = {orjson.loads(r.value)["id"] for r in read_topic(bootstrap, topic)}
    assert ids == set(alerts(clean))


def test_kafka_source_survives_kill_9(tmp_path, kafka_broker, make_topic, kafka_client):
    topic = make_topic(3)
    # 1.2M events: with its records parsed by aiokafka's C parser, the kafka-python flow
    # finished 360k before its fifth kill
    gen = GeneratorConfig(events=1_200_000, accounts=1_500, seed=9, partitions=1)
    produced = fill_topic(kafka_broker, topic, gen)
    clean, crashed = kafka_configs(tmp_path, kafka_broker, topic, make_topic, kafka_client)
    run_clean(clean)
    kills = run_with_kills(crashed, seed=7, windows=KAFKA_KILL_WINDOWS)
    assert kills >= KILLS
    assert_same(clean, crashed)
    assert_kafka_alerts(kafka_broker, clean, crashed)
    last = orjson.loads(crashed.stats_path.read_bytes())["counters"]
    assert last.get("read", 0) < produced


def test_kafka_source_two_processes_survive_kill_9(tmp_path, kafka_broker, make_topic):
    topic = make_topic(3)
    # 1.5M events: with its records parsed by aiokafka's C parser, the kafka-python flow
    # finished 500k before its tenth kill on a quiet machine
    gen = GeneratorConfig(events=1_500_000, accounts=1_500, seed=11, partitions=1)
    produced = fill_topic(kafka_broker, topic, gen)
    clean, crashed = kafka_configs(tmp_path, kafka_broker, topic, make_topic)
    run_clean(clean)
    kills = run_with_kills(
        crashed,
        seed=17,
        windows=TWO_PROCESS_KAFKA_WINDOWS,
        kills_wanted=TWO_PROCESS_KILLS,
        processes=2,
    )
    assert kills >= TWO_PROCESS_KILLS
    assert_same(clean, crashed)
    assert_kafka_alerts(kafka_broker, clean, crashed)
    last = orjson.loads(crashed.stats_path.read_bytes())["counters"]
    assert last.get("read", 0) < produced


def test_file_source_two_processes_survive_kill_9(tmp_path):
    paths = write_events(
        tmp_path / "errors.csv",
        GeneratorConfig(events=4_000_000, accounts=2_000, seed=5),
        fmt="csv",
        files=2,
        junk_rate=0.0001,
    )
    assert len(paths) == 2
    source = SourceConfig(kind="file", paths=tuple(str(p) for p in paths), chunk_bytes=1 << 20)
    clean = config_for(tmp_path, "clean", source, recovery=False)
    run_clean(clean)
    crashed = config_for(tmp_path, "crashed", source, recovery=True)
    kills = run_with_kills(
        crashed,
        seed=43,
        windows=TWO_PROCESS_FILE_WINDOWS,
        kills_wanted=TWO_PROCESS_KILLS,
        processes=2,
    )
    assert kills >= TWO_PROCESS_KILLS
    assert_same(clean, crashed)
    last = orjson.loads(crashed.stats_path.read_bytes())["counters"]
    total = orjson.loads(clean.stats_path.read_bytes())["counters"]["read"]
    assert last.get("read", 0) < total
