"""The Kubernetes manifests, run as local processes: each pod's exact command line on loopback.

The StatefulSet is rendered for two replicas and parsed as Kubernetes would read it. Each pod's
command is the image's entry point (deploy/Dockerfile) followed by the container's `args`, with
its `env`, its host name (`NAME-ORDINAL`, as Kubernetes sets it) and its mounts. Only what a
cluster provides is replaced: the pods' DNS names under the headless Service by loopback ports,
each pod's volume by a directory of its own, and the ConfigMap's mount by its files. The
processes read a real broker until the flow's consumer group shows no lag (as an operator
watches it) and are stopped with SIGTERM (as Kubernetes stops a pod); they run again with more
input (as after a rescheduling), one pod's processes are killed (a node failure: the other pod's
process must end by itself so that its container restarts too), and all run once more. The
alerts topic and the two pods' state then hold the oracle's values.
"""

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import yaml
from kafka import KafkaAdminClient, KafkaProducer
from streamml.state.online import OnlineStore

from streamml.deploy import DATA_MOUNT, DeployConfig, render_manifest
from streamml.runner import free_ports
from tests.dataflows.test_error_count_kafka import read_topic
from tests.oracle import RollingOracle

ROOT = Path(__file__).resolve().parents[2]
THRESHOLD = 40
FEATURE = "signal_errors_24h"
HOUR = 3_600_000


def test_committed_example_is_the_default_rendering():
    committed = (ROOT / "deploy" / "k8s" / "streamml.yaml").read_text()
    assert committed == render_manifest(DeployConfig()), (
        "deploy/k8s/streamml.yaml is out of date: streamml deploy render > deploy/k8s/streamml.yaml"
    )


def test_render_command_prints_the_rendering(tmp_path):
    out = tmp_path / "m.yaml"
    cmd = [sys.executable, "-m", "streamml.cli", "deploy", "render", "--replicas", "3"]
    subprocess.run([*cmd, "--topic", "signal_errors=errs", "--out", str(out)], check=True)
    expected = DeployConfig(replicas=3, topics=(("signal_errors", "errs"),))
    assert out.read_text() == render_manifest(expected)


def test_pods_run_as_the_images_user():
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    (user,) = re.findall(r"^USER (\d+):(\d+)$", dockerfile, re.MULTILINE)
    docs = {d["kind"]: d for d in yaml.safe_load_all(render_manifest(DeployConfig()))}
    security = docs["StatefulSet"]["spec"]["template"]["spec"]["securityContext"]
    assert (str(security["runAsUser"]), str(security["runAsGroup"])) == user
    assert str(security["fsGroup"]) == user[1]  # the volumes are writable by the image's user
    assert f"mkdir -p {DATA_MOUNT}" in dockerfile


def entrypoint() -> list[str]:
    """The image's ENTRYPOINT, with `streamml` as installed beside this Python."""
    for line in (ROOT / "deploy" / "Dockerfile").read_text().splitlines():
        if line.startswith("ENTRYPOINT"):
            words = json.loads(line.removeprefix("ENTRYPOINT"))
            assert words[0] == "streamml"
            return [str(Path(sys.executable).parent / "streamml"), *words[1:]]
    raise AssertionError("deploy/Dockerfile has no ENTRYPOINT")


def pods_as_processes(manifest: str, tmp: Path) -> list[tuple[list[str], dict[str, str]]]:
    """Return each pod's (command, environment) as local processes, in ordinal order."""
    docs = {d["kind"]: d for d in yaml.safe_load_all(manifest)}
    service, sts, config_map = docs["Service"], docs["StatefulSet"], docs["ConfigMap"]
    name, spec = sts["metadata"]["name"], sts["spec"]
    assert service["spec"]["clusterIP"] == "None"
    assert spec["serviceName"] == service["metadata"]["name"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    port = container["ports"][0]["containerPort"]
    assert service["spec"]["ports"][0]["port"] == port
    replicas = spec["replicas"]

    # The pods' names under the headless Service, in ordinal order, become loopback ports.
    domain = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc."
    hosts = [f"{name}-{i}.{domain}" for i in range(replicas)]
    (addresses,) = [a for a in container["args"] if a.startswith("--addresses=")]
    listed = addresses.removeprefix("--addresses=").split(";")
    assert [re.sub(r"cluster\.local:\d+$", "", a) for a in listed] == hosts
    assert all(a.endswith(f":{port}") for a in listed)
    local = ";".join(f"127.0.0.1:{p}" for p in free_ports(replicas))

    # Mounts: the volumeClaimTemplate is one directory per pod; the ConfigMap's files are
    # written once, as Kubernetes projects them.
    claims = {c["metadata"]["name"] for c in spec["volumeClaimTemplates"]}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    projected = tmp / "configmap"
    projected.mkdir()
    assert volumes["definitions"]["configMap"]["name"] == config_map["metadata"]["name"]
    for file_name, text in config_map["data"].items():
        (projected / file_name).write_text(text)

    out = []
    for ordinal in range(replicas):
        mounts = {}
        for m in container["volumeMounts"]:
            if m["name"] in claims:
                mounts[m["mountPath"]] = tmp / f"{name}-{ordinal}" / m["name"]
                mounts[m["mountPath"]].mkdir(parents=True)
            else:
                assert "configMap" in volumes[m["name"]]
                mounts[m["mountPath"]] = projected
        args = []
        for arg in container["args"]:
            if arg == addresses:
                arg = f"--addresses={local}"
            for path, there in mounts.items():
                arg = arg.replace(f"={path}/", f"={there}/")
            args.append(arg)
        env = {**os.environ, "HOSTNAME": f"{name}-{ordinal}"}
        env.update({e["name"]: e["value"] for e in container["env"]})
        out.append(([*entrypoint(), *args], env))
    return out


def produce(bootstrap: str, topic: str, events, *, malformed=()) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    for account, ts in events:
        producer.send(
            topic, key=account.encode(), value=orjson.dumps({"account": account, "ts": ts})
        )
    for i, raw in enumerate(malformed):
        producer.send(topic, key=f"bad-{i}".encode(), value=raw)
    producer.flush()
    producer.close()


def wait_for_no_lag(bootstrap: str, group: str, topic: str, records: int, procs) -> None:
    """Wait until `group`'s committed offsets on `topic` add up to the `records` it holds.

    (The broker used in tests can under-report a partition's end offset, so the test counts
    what it produced instead.)
    """
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        deadline = time.monotonic() + 60
        while True:
            for p in procs:
                assert p.poll() is None, f"a pod's process ended (exit {p.returncode})"
            offsets = admin.list_group_offsets({group: None}).get(group, {})
            committed = sum(o.offset for tp, o in offsets.items() if tp.topic == topic)
            if committed >= records:
                assert committed == records
                return
            assert time.monotonic() < deadline, f"lag never reached 0: {committed} of {records}"
            time.sleep(0.3)
    finally:
        admin.close()


def start(pods, logs: Path, run: int) -> list[subprocess.Popen]:
    """Start every pod's process, each in its own process group (its container)."""
    procs = []
    for i, (cmd, env) in enumerate(pods):
        log = (logs / f"pod-{i}-run-{run}.log").open("wb")
        procs.append(
            subprocess.Popen(
                cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        )
    return procs


def kill_container(proc: subprocess.Popen) -> None:
    """Kill every process of a pod's container at once, as when its node fails."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def log_tail(logs: Path) -> str:
    return "".join(f.read_text(errors="replace") for f in sorted(logs.glob("*.log")))[-4000:]


def run_until_no_lag(pods, logs: Path, run: int, kafka, *, records: int, fail_pod=None) -> None:
    """Run the pods until the flow shows no lag, then stop them with SIGTERM (as Kubernetes
    stops a pod), or with `fail_pod`, kill that pod's container and see the others end."""
    bootstrap, group, topic = kafka
    procs = start(pods, logs, run)
    try:
        wait_for_no_lag(bootstrap, group, topic, records, procs)
        if fail_pod is None:
            for p in procs:
                p.send_signal(signal.SIGTERM)  # to the container's first process
            codes = [p.wait(timeout=30) for p in procs]
            assert codes == [130] * len(procs), (codes, log_tail(logs))
        else:
            kill_container(procs[fail_pod])
            # The others end by themselves, so Kubernetes restarts their containers too.
            others = [p for i, p in enumerate(procs) if i != fail_pod]
            codes = [p.wait(timeout=30) for p in others]
            assert all(c not in (0, 130) for c in codes), (codes, log_tail(logs))
    finally:
        for p in procs:
            kill_container(p)


def events_for(rng: random.Random, accounts: list[str], n: int, start_hour: int):
    out = []
    for i in range(n):
        account = rng.choice(accounts[:5] if rng.random() < 0.5 else accounts)
        ts = HOUR * (start_hour + i // 80) + rng.randint(-2 * HOUR, HOUR)
        if rng.random() < 0.01:
            ts -= 30 * HOUR  # late: more than a window behind
        out.append((account, max(ts, 0)))
    return out


def test_statefulset_pods_run_as_local_processes_give_the_oracles_values(
    kafka_broker, make_topic, tmp_path
):
    topic, alerts_topic, dead_topic = make_topic(4), make_topic(2), make_topic(1)
    group = f"deploy-test-{topic}"
    bundled = DeployConfig().definitions
    definitions = bundled.replace("alert = { above = 2000 }", f"alert = {{ above = {THRESHOLD} }}")
    assert definitions != bundled
    config = DeployConfig(
        replicas=2,
        image="streamml:test",
        brokers=kafka_broker,
        topics=(("signal_errors", topic),),
        alerts_topic=alerts_topic,
        dead_letters_topic=dead_topic,
        group_id=group,
        snapshot_interval_s=1,
        definitions=definitions,
    )
    pods = pods_as_processes(render_manifest(config), tmp_path)
    state_dirs = [
        Path(next(a for a in cmd if a.startswith("--state-dir=")).split("=", 1)[1])
        for cmd, _ in pods
    ]
    assert all(str(d).startswith(str(tmp_path)) and DATA_MOUNT not in str(d) for d in state_dirs)
    logs = tmp_path / "logs"
    logs.mkdir()

    rng = random.Random(12)
    accounts = [f"acct-{i:02d}" for i in range(30)]
    first = events_for(rng, accounts, 2000, 1000)
    second = events_for(rng, accounts, 1000, 1000 + 2000 // 80)
    third = events_for(rng, accounts, 1000, 1000 + 3000 // 80)
    malformed = [b"not json", b'{"account": ""}', b'{"account": "a", "ts": -1}']
    kafka = (kafka_broker, group, topic)

    produce(kafka_broker, topic, first, malformed=malformed)
    records = len(first) + len(malformed)
    run_until_no_lag(pods, logs, 1, kafka, records=records)
    # Pods deleted and scheduled again: the same commands on the same volumes continue.
    produce(kafka_broker, topic, second)
    records += len(second)
    run_until_no_lag(pods, logs, 2, kafka, records=records, fail_pod=1)
    # A pod's node failed: every container restarts and the cluster resumes from its snapshots.
    produce(kafka_broker, topic, third)
    records += len(third)
    run_until_no_lag(pods, logs, 3, kafka, records=records)

    # Kafka keeps each account's records in order (keyed), so the oracle sees them in order.
    oracle = RollingOracle(threshold=THRESHOLD)
    expected_alerts = set()
    for account, ts in first + second + third:
        _kind, value, fired = oracle.apply(account, ts)
        if fired:
            expected_alerts.add((account, ts, value))
    alerts = {}
    for record in read_topic(kafka_broker, alerts_topic):
        alert = orjson.loads(record.value)
        alerts[alert["id"]] = (alert["account"], alert["ts"], alert["value"])  # at least once
    assert expected_alerts and set(alerts.values()) == expected_alerts
    assert len(alerts) == len(expected_alerts)
    assert len(read_topic(kafka_broker, dead_topic)) == len(malformed)

    # Each account lives in one pod's state (the shards that pod's process owns).
    as_of = max(oracle.max_bucket.values()) * HOUR
    reads = []
    for state_dir in state_dirs:
        store = OnlineStore(state_dir)
        reads.append([r[FEATURE] for r in store.get_features(accounts, [FEATURE], as_of=as_of)])
        store.close()
    owners = {0: 0, 1: 0}
    for i, account in enumerate(accounts):
        held = [pod for pod in range(2) if reads[pod][i].status != "missing"]
        assert len(held) == 1, (account, held)
        owners[held[0]] += 1
        got = reads[held[0]][i]
        assert got.value == oracle.value_as_of(account, as_of), account
        assert got.updated_at == oracle.updated_at[account]
    assert all(owners.values()), owners  # both pods hold state


def test_process_id_comes_from_the_pods_ordinal():
    from streamml.cluster import ClusterMember, cluster_member, ordinal_from_hostname

    assert ordinal_from_hostname("streamml-0") == 0
    assert ordinal_from_hostname("my-flow-12.my-flow.default.svc.cluster.local") == 12
    with pytest.raises(ValueError, match="-ORDINAL"):
        ordinal_from_hostname("laptop")
    member = cluster_member(
        process_id=None, from_hostname=True, addresses="h0:1;h1:1", env={"HOSTNAME": "x-1"}
    )
    assert member == ClusterMember(1, ("h0:1", "h1:1"))
    assert member.worker_args() == ["-i", "1", "-a", "h0:1;h1:1"]
    assert cluster_member(process_id=None, from_hostname=False, addresses=None) is None
    for kwargs, message in [
        ({"process_id": 2, "addresses": "h0:1;h1:1"}, "not in"),
        ({"process_id": 0, "addresses": None}, "needs --addresses"),
        ({"process_id": None, "addresses": "h0:1"}, "needs --process-id"),
        ({"process_id": 0, "addresses": "h0"}, "HOST:PORT"),
        ({"process_id": 0, "addresses": "h0:1;h0:1"}, "twice"),
    ]:
        with pytest.raises(ValueError, match=message):
            cluster_member(from_hostname=False, **kwargs)


def test_cluster_options_are_checked_before_anything_runs(tmp_path):
    from tests.streamml.test_cli import streamml

    base = ["run", "features", "--generate", "signal_errors", "--state-dir", str(tmp_path / "s")]
    cluster = ["--process-id", "0", "--addresses", "h:1", "--processes", "2"]
    out = streamml(*base, *cluster, check=False)
    assert out.returncode == 2 and "leave --processes out" in out.stderr
    env_host = {"HOSTNAME": "laptop"}
    proc = subprocess.run(
        [sys.executable, "-m", "streamml.cli", *base, "--process-id-from-hostname"],
        capture_output=True,
        text=True,
        env={**os.environ, **env_host},
    )
    assert proc.returncode == 2 and "-ORDINAL" in proc.stderr
    assert not (tmp_path / "s").exists()


def test_deploy_commands_load_no_heavy_module():
    from tests.streamml.test_fast_start import heavy_in, loaded_modules

    assert heavy_in(loaded_modules("deploy", "render", "--help")) == []
    modules = loaded_modules("deploy", "render")
    assert heavy_in(modules) == []
    assert not any(m == "streamml.state" or m.startswith("streamml.state.") for m in modules)
