"""Kubernetes manifests of the features flow over several hosts: one source, rendered here.

`render_manifest(DeployConfig(...))` returns the YAML of a headless Service, a ConfigMap holding
the feature definitions and a StatefulSet whose pods are the processes of one Bytewax cluster:

- pod ``NAME-I`` runs ``streamml run features ... --process-id-from-hostname --addresses A``:
  its process id is its ordinal, and ``A`` lists every pod's stable DNS name under the headless
  Service (``NAME-0.NAME.NAMESPACE.svc.DOMAIN:PORT;...``), so each process listens on its own
  name and connects to the others;
- each pod's state dir and recovery dir live on its own volume (a volumeClaimTemplate), which
  Kubernetes gives back to the pod of the same ordinal when it is rescheduled;
- the image's entry point is ``streamml`` (``deploy/Dockerfile``), so ``args`` is the command.

`streamml deploy render` prints it; ``deploy/k8s/streamml.yaml`` is the rendering with the
defaults (a test keeps the two equal). The rendering depends only on the standard library.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

__all__ = [
    "DATA_MOUNT",
    "DEFINITIONS_MOUNT",
    "DeployConfig",
    "bundled_definitions_text",
    "pod_addresses",
    "render_manifest",
]

DATA_MOUNT = "/var/lib/streamml"
"""Where a pod's own volume is mounted: ``state/`` and ``recovery/`` are under it."""

DEFINITIONS_MOUNT = "/etc/streamml"
"""Where the ConfigMap of feature definitions is mounted (``features.toml``)."""


def bundled_definitions_text() -> str:
    """Return the text of the bundled feature definitions (without importing the state package)."""
    spec = importlib.util.find_spec("streamml.state")
    assert spec is not None and spec.submodule_search_locations
    root = Path(next(iter(spec.submodule_search_locations)))
    return (root / "bundled" / "features.toml").read_text()


@dataclass(frozen=True, slots=True)
class DeployConfig:
    """The parameters of the manifests (`streamml deploy render --help` describes each)."""

    name: str = "streamml"
    namespace: str = "default"
    cluster_domain: str = "cluster.local"
    image: str = "streamml:0.1.0"
    replicas: int = 2
    brokers: str = "kafka:9092"
    topics: tuple[tuple[str, str], ...] = (("signal_errors", "signal-errors"),)
    alerts_topic: str | None = "signal-alerts"
    dead_letters_topic: str | None = "signal-errors-dlq"
    group_id: str | None = "streamml-features"
    port: int = 2101
    snapshot_interval_s: int = 10
    storage: str = "20Gi"
    storage_class: str | None = None
    cpu: str = "1"
    memory: str = "2Gi"
    definitions: str = field(default_factory=bundled_definitions_text)

    def __post_init__(self) -> None:
        if not 1 <= self.replicas <= 1024:
            raise ValueError(f"replicas must be in [1, 1024], got {self.replicas}")
        if not self.topics:
            raise ValueError("give at least one SOURCE=TOPIC")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be in [1, 65535], got {self.port}")
        if self.snapshot_interval_s < 1:
            raise ValueError("the snapshot interval is a whole number of seconds >= 1")
        if not self.name or len(self.name) > 40 or not self.name.replace("-", "").isalnum():
            raise ValueError(
                f"name {self.name!r} must be 1-40 letters, digits and dashes (a DNS label: "
                "pods are NAME-0, NAME-1, ...)"
            )


def pod_addresses(config: DeployConfig) -> list[str]:
    """Return the ``HOST:PORT`` of every pod, in ordinal order (the ``--addresses`` list)."""
    svc = f"{config.name}.{config.namespace}.svc.{config.cluster_domain}"
    return [f"{config.name}-{i}.{svc}:{config.port}" for i in range(config.replicas)]


def _q(value: object) -> str:
    """Quote a scalar for YAML (a JSON string is a YAML double-quoted scalar)."""
    return json.dumps(str(value))


def _args(config: DeployConfig) -> list[str]:
    args = [
        "run",
        "features",
        f"--definitions={DEFINITIONS_MOUNT}/features.toml",
        *(f"--topic={source}={topic}" for source, topic in config.topics),
        f"--brokers={config.brokers}",
        f"--state-dir={DATA_MOUNT}/state",
        f"--recovery-dir={DATA_MOUNT}/recovery",
        f"--snapshot-interval={config.snapshot_interval_s}",
        "--process-id-from-hostname",
        f"--addresses={';'.join(pod_addresses(config))}",
    ]
    return args


def _env(config: DeployConfig) -> list[tuple[str, str]]:
    env = [("PYTHONUNBUFFERED", "1")]
    if config.alerts_topic:
        env.append(("STREAMML_KAFKA_ALERTS_TOPIC", config.alerts_topic))
    if config.dead_letters_topic:
        env.append(("STREAMML_KAFKA_DEAD_LETTERS_TOPIC", config.dead_letters_topic))
    if config.group_id:
        env.append(("STREAMML_KAFKA_GROUP_ID", config.group_id))
    return env


_TEMPLATE = Template(
    """\
# The features flow as one Bytewax cluster over ${replicas} pods: rendered by
# `streamml deploy render` (streamml/deploy.py); see README, "Deploying on Kubernetes".
# Pod NAME-I is process I of the cluster (--process-id-from-hostname); --addresses lists
# every pod's name under the headless Service. Each pod keeps the state of the shards it
# owns on its own volume: render again to change the replica count, and read the README first.
apiVersion: v1
kind: Service
metadata:
  name: ${name}
  namespace: ${namespace}
  labels:
    app.kubernetes.io/name: ${name}
spec:
  # Headless: no virtual IP, one DNS name per pod (NAME-I.NAME.NAMESPACE.svc...), published
  # before the pods are ready, since each process needs the others' names to start.
  clusterIP: None
  publishNotReadyAddresses: true
  selector:
    app.kubernetes.io/name: ${name}
  ports:
    - name: cluster
      port: ${port}
      targetPort: cluster
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: ${name}-definitions
  namespace: ${namespace}
  labels:
    app.kubernetes.io/name: ${name}
data:
  features.toml: |
${definitions}
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: ${name}
  namespace: ${namespace}
  labels:
    app.kubernetes.io/name: ${name}
spec:
  serviceName: ${name}
  replicas: ${replicas}
  # Start every pod at once: no process runs before all of them are up.
  podManagementPolicy: Parallel
  selector:
    matchLabels:
      app.kubernetes.io/name: ${name}
  persistentVolumeClaimRetentionPolicy:
    whenDeleted: Retain
    whenScaled: Retain
  template:
    metadata:
      labels:
        app.kubernetes.io/name: ${name}
    spec:
      # SIGTERM stops the flow like Ctrl-C; a kill at any moment is safe too (recovery).
      terminationGracePeriodSeconds: 30
      securityContext:
        runAsNonRoot: true
        runAsUser: 10001
        runAsGroup: 10001
        fsGroup: 10001
      containers:
        - name: flow
          image: ${image}
          # The image's entry point is `streamml`: these are its arguments.
          args:
${args}
          env:
${env}
          # Kafka security settings (STREAMML_KAFKA_SECURITY_PROTOCOL, STREAMML_KAFKA_SASL_*,
          # STREAMML_KAFKA_SSL_*), when the Secret exists.
          envFrom:
            - secretRef:
                name: ${name}-kafka
                optional: true
          ports:
            - name: cluster
              containerPort: ${port}
          resources:
            requests:
              cpu: ${cpu}
              memory: ${memory}
            limits:
              memory: ${memory}
          volumeMounts:
            - name: data
              mountPath: ${data_mount}
            - name: definitions
              mountPath: ${definitions_mount}
              readOnly: true
      volumes:
        - name: definitions
          configMap:
            name: ${name}-definitions
  volumeClaimTemplates:
    - metadata:
        name: data
      spec:
        accessModes: ["ReadWriteOnce"]
${storage_class}        resources:
          requests:
            storage: ${storage}
"""
)


def render_manifest(config: DeployConfig) -> str:
    """Return the YAML of the Service, ConfigMap and StatefulSet for `config`."""
    definitions = "\n".join(
        f"    {line}" if line.strip() else "" for line in config.definitions.splitlines()
    )
    args = "\n".join(f"            - {_q(a)}" for a in _args(config))
    env = "\n".join(
        f"            - name: {name}\n              value: {_q(value)}"
        for name, value in _env(config)
    )
    storage_class = ""
    if config.storage_class:
        storage_class = f"        storageClassName: {_q(config.storage_class)}\n"
    return _TEMPLATE.substitute(
        name=config.name,
        namespace=config.namespace,
        replicas=config.replicas,
        port=config.port,
        image=_q(config.image),
        definitions=definitions,
        args=args,
        env=env,
        cpu=_q(config.cpu),
        memory=_q(config.memory),
        data_mount=DATA_MOUNT,
        definitions_mount=DEFINITIONS_MOUNT,
        storage_class=storage_class,
        storage=_q(config.storage),
    )
