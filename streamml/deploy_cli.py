"""`streamml deploy render`: print the Kubernetes manifests of the flow over several hosts."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    """Add `streamml deploy`."""
    from streamml.deploy import DeployConfig

    d = DeployConfig.__dataclass_fields__
    p = sub.add_parser(
        "deploy",
        help="render the Kubernetes manifests (a StatefulSet of flow processes)",
        description="Deployment files for running the features flow over several hosts.",
    )
    dsub = p.add_subparsers(dest="deploy_command", metavar="COMMAND", required=True)
    r = dsub.add_parser(
        "render",
        help="print the headless Service, ConfigMap and StatefulSet as YAML",
        description=(
            "Print the manifests of the features flow as one Bytewax cluster over REPLICAS pods "
            "(kubectl apply -f -): pod NAME-I is process I, the processes find each other by "
            "their names under a headless Service, and each pod keeps its state and recovery "
            "dirs on its own volume. The image is built from deploy/Dockerfile."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    r.add_argument("--name", default=d["name"].default, help="StatefulSet and Service name")
    r.add_argument("--namespace", default=d["namespace"].default)
    r.add_argument("--cluster-domain", default=d["cluster_domain"].default)
    r.add_argument("--image", default=d["image"].default, help="image built from deploy/Dockerfile")
    r.add_argument(
        "--replicas",
        type=int,
        default=d["replicas"].default,
        help="pods = flow processes; fixed for the life of their volumes (see README)",
    )
    r.add_argument("--brokers", default=d["brokers"].default, help="Kafka bootstrap servers")
    r.add_argument(
        "--topic",
        action="append",
        default=[],
        metavar="SOURCE=TOPIC",
        help="a source of the definitions and its topic; repeat for more "
        "(default: signal_errors=signal-errors)",
    )
    r.add_argument("--alerts-topic", default=d["alerts_topic"].default, help="'' for none")
    r.add_argument(
        "--dead-letters-topic", default=d["dead_letters_topic"].default, help="'' for none"
    )
    r.add_argument(
        "--group-id",
        default=d["group_id"].default,
        help="consumer group the flow's positions are committed to, for lag monitoring only "
        "('' for none)",
    )
    r.add_argument("--port", type=int, default=d["port"].default, help="port between processes")
    r.add_argument(
        "--snapshot-interval", type=int, default=d["snapshot_interval_s"].default, help="seconds"
    )
    r.add_argument("--storage", default=d["storage"].default, help="size of each pod's volume")
    r.add_argument("--storage-class", help="storage class of the volumes (default: the cluster's)")
    r.add_argument("--cpu", default=d["cpu"].default, help="CPU request of each pod")
    r.add_argument("--memory", default=d["memory"].default, help="memory of each pod")
    r.add_argument(
        "--definitions",
        type=Path,
        help="feature definition file for the ConfigMap (default: the bundled one)",
    )
    r.add_argument("--out", type=Path, help="write here instead of printing")
    r.set_defaults(func=_cmd_render)


def _cmd_render(args: argparse.Namespace) -> int:
    from streamml.deploy import DeployConfig, render_manifest

    try:
        topics = []
        for item in args.topic:
            source, sep, topic = item.partition("=")
            if not sep or not source or not topic:
                raise ValueError(f"--topic takes SOURCE=TOPIC, got {item!r}")
            topics.append((source, topic))
        extra = {"topics": tuple(topics)} if topics else {}
        if args.definitions is not None:
            extra["definitions"] = args.definitions.read_text()
        config = DeployConfig(
            name=args.name,
            namespace=args.namespace,
            cluster_domain=args.cluster_domain,
            image=args.image,
            replicas=args.replicas,
            brokers=args.brokers,
            alerts_topic=args.alerts_topic or None,
            dead_letters_topic=args.dead_letters_topic or None,
            group_id=args.group_id or None,
            port=args.port,
            snapshot_interval_s=args.snapshot_interval,
            storage=args.storage,
            storage_class=args.storage_class,
            cpu=args.cpu,
            memory=args.memory,
            **extra,
        )
    except (ValueError, OSError) as exc:
        print(f"streamml deploy render: {exc}", file=sys.stderr)
        return 2
    text = render_manifest(config)
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
    return 0
