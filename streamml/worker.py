"""Run one Bytewax worker process without touching `sys.path`.

``python -P -m streamml.worker MODULE:ATTR [bytewax.run options]`` takes the same options as
``python -m bytewax.run``, but imports the dataflow from the installed packages only: unlike
``bytewax.run`` it does not put the current directory first on `sys.path`, so folders of the
working directory (a state dir named ``state``, say) can never shadow a module. The CLI starts
every worker this way.
"""

from __future__ import annotations

import ipaddress
import os
import sys
import time
from collections.abc import Sequence
from datetime import timedelta

from streamml.state.errors import RefusedError

__all__ = ["REFUSED_EXIT", "listening_ports", "main", "wait_for_lower_peers"]

REFUSED_EXIT = 3
"""Exit code of a worker whose run was refused (`RefusedError`) before it wrote anything."""


def main(argv: Sequence[str] | None = None) -> None:
    """Parse ``bytewax.run`` options from `argv`, import the dataflow and run this worker."""
    from bytewax import run as bytewax_run
    from bytewax.recovery import RecoveryConfig

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    kwargs = vars(bytewax_run._parse_args())
    snapshot_interval = kwargs.pop("snapshot_interval")
    recovery_directory = kwargs.pop("recovery_directory")
    backup_interval = kwargs.pop("backup_interval")
    kwargs["recovery_config"] = None
    if recovery_directory is not None:
        kwargs["epoch_interval"] = snapshot_interval
        kwargs["recovery_config"] = RecoveryConfig(recovery_directory, backup_interval)
    else:
        kwargs["epoch_interval"] = snapshot_interval or timedelta(seconds=10)
    addresses = kwargs.pop("addresses")
    if addresses is not None:
        kwargs["addresses"] = addresses.split(";")
    # Partition routing (`streamml.operators.routing`) keys shards by this worker's index.
    per_process = kwargs.get("workers_per_process") or 1
    processes = len(kwargs["addresses"]) if addresses is not None else 1
    os.environ["STREAMML_PROCESS_ID"] = str((kwargs.get("process_id") or 0) * per_process)
    os.environ["STREAMML_PROCESSES"] = str(processes * per_process)
    module, _, attr = kwargs.pop("import_str").partition(":")
    try:
        kwargs["flow"] = bytewax_run._locate_dataflow(module, attr or "flow")
        if addresses is not None:
            wait_for_lower_peers(kwargs["addresses"], kwargs.get("process_id") or 0)
        bytewax_run.cli_main(**kwargs)
    except Exception as exc:
        refused = _refusal(exc)
        if refused is None:
            raise
        print(f"streamml: refused: {refused}", file=sys.stderr, flush=True)
        sys.exit(REFUSED_EXIT)


def listening_ports() -> set[int] | None:
    """Return the TCP ports something on this host listens on, or None where /proc cannot tell."""
    ports: set[int] = set()
    try:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table, encoding="ascii") as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) > 3 and fields[3] == "0A":  # TCP_LISTEN
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    except OSError:
        return None
    return ports


def _loopback_port(address: str) -> int | None:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return None
    return int(port) if loopback and port.isdigit() else None


def wait_for_lower_peers(
    addresses: Sequence[str], process_id: int, timeout_s: float = 30.0, poll_s: float = 0.005
) -> bool:
    """Wait until the processes before `process_id` listen on their loopback addresses.

    Process i connects to processes 0..i-1 as the run starts; when one of them does not listen
    yet, Timely waits a whole second before it tries again, which made about two runs in three
    of several processes on one host start a second late. Watching the listening sockets
    (/proc/net/tcp) lets this process connect as soon as they are up, without a connection of
    its own (the peer would take one for a worker). Addresses of other hosts are not watched:
    Timely's retries stay for them, as for everything after `timeout_s`. Returns whether every
    watched peer was seen listening.
    """
    wanted = {p for a in addresses[:process_id] if (p := _loopback_port(a)) is not None}
    deadline = time.monotonic() + timeout_s
    while wanted:
        ports = listening_ports()
        if ports is None:
            return False
        wanted -= ports
        if not wanted:
            break
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
    return True


def _refusal(exc: BaseException | None) -> RefusedError | None:
    """Return the `RefusedError` behind `exc` (Bytewax wraps errors of sources and sinks)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, RefusedError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


if __name__ == "__main__":
    main()
