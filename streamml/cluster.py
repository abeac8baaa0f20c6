"""One flow process of a cluster spread over several hosts (Bytewax's ``-i``/``-a``).

`streamml run error-count|features --processes N` starts N cooperating worker processes on one
machine. Across machines each host runs one process of the cluster: the same command with
``--process-id I`` (or ``--process-id-from-hostname``) and ``--addresses "H0:P;H1:P;..."``,
the host and port of every process, in process-id order, the same list on every host. Process I
listens on the I-th address and connects to the others (Bytewax retries until they are up).

In a Kubernetes StatefulSet a pod's host name is ``NAME-ORDINAL``, so the ordinal is the
process id and the addresses are the pods' names under the headless service
(``NAME-0.SERVICE.NAMESPACE.svc.cluster.local:P;...``); see `streamml.deploy`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["ClusterMember", "cluster_member", "ordinal_from_hostname"]

_ORDINAL = re.compile(r"-(\d+)$")


@dataclass(frozen=True, slots=True)
class ClusterMember:
    """A process's place in a cluster: its id and the address of every process, in order."""

    process_id: int
    addresses: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.addresses) < 1:
            raise ValueError("a cluster needs the address of every process (--addresses)")
        for address in self.addresses:
            host, sep, port = address.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(
                    f"--addresses: {address!r} is not HOST:PORT (expected, e.g., "
                    '"flow-0.flow:2101;flow-1.flow:2101")'
                )
        if len(set(self.addresses)) != len(self.addresses):
            raise ValueError(f"--addresses names one address twice: {';'.join(self.addresses)}")
        if not 0 <= self.process_id < len(self.addresses):
            raise ValueError(
                f"process id {self.process_id} is not in [0, {len(self.addresses) - 1}]: "
                f"--addresses names {len(self.addresses)} processes"
            )

    @property
    def processes(self) -> int:
        """How many processes the cluster has."""
        return len(self.addresses)

    def worker_args(self) -> list[str]:
        """Return the ``bytewax.run`` options that make a worker this member of the cluster."""
        return ["-i", str(self.process_id), "-a", ";".join(self.addresses)]


def ordinal_from_hostname(hostname: str) -> int:
    """Return the ordinal that ends a StatefulSet pod's host name (``streamml-3`` gives 3)."""
    match = _ORDINAL.search(hostname.split(".", 1)[0])
    if match is None:
        raise ValueError(
            f"host name {hostname!r} does not end with -ORDINAL as a StatefulSet pod's does "
            "(NAME-0, NAME-1, ...); give --process-id instead"
        )
    return int(match.group(1))


def cluster_member(
    *,
    process_id: int | None,
    from_hostname: bool,
    addresses: str | None,
    env: Mapping[str, str] | None = None,
) -> ClusterMember | None:
    """Build this process's `ClusterMember` from the CLI options, or None without any.

    `addresses` is ``HOST:PORT;HOST:PORT...``; `from_hostname` takes the process id from the
    ordinal ending ``$HOSTNAME``. Raises ValueError when the options do not fit together.
    """
    env = os.environ if env is None else env
    if process_id is not None and from_hostname:
        raise ValueError("give --process-id or --process-id-from-hostname, not both")
    if from_hostname:
        hostname = env.get("HOSTNAME") or os.uname().nodename
        process_id = ordinal_from_hostname(hostname)
    if process_id is None and addresses is None:
        return None
    if process_id is None:
        raise ValueError("--addresses needs --process-id or --process-id-from-hostname")
    if addresses is None:
        raise ValueError("--process-id needs --addresses (the HOST:PORT of every process)")
    return ClusterMember(process_id, tuple(a.strip() for a in addresses.split(";") if a.strip()))
