"""Where Bytewax runs a keyed step's state, and keys that keep a shard in a chosen process.

Bytewax 0.21 routes every item of a stateful step (``stateful_batch``, ``stateful_map``, ...) to
worker ``h % W`` of its W workers, where ``h`` is Rust's default hasher (SipHash-1-3 with zero
keys) over the key's UTF-8 bytes followed by the byte 0xFF, read as an unsigned 64-bit integer.
`worker_of_key` computes the same in Python (tests hold it against a running cluster).

`key_on_worker` picks, for a shard and a worker, the first of ``shard-NNN``, ``shard-NNN.1``,
``shard-NNN.2``, ... that Bytewax routes to that worker: a flow that keys a shard's batches so
keeps the shard's state in the process that reads its input, and no batch crosses processes.
With one worker every shard keeps its plain name.

`PartitionRouting` is what the shard step needs to do it: this process's worker index and the
worker count, read from ``STREAMML_PROCESS_ID`` and ``STREAMML_PROCESSES`` (the CLI's worker
entry point sets them from ``-i`` and ``-a``; set them yourself to run ``bytewax.run`` with
partition routing).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["ROUTINGS", "PartitionRouting", "key_on_worker", "siphash13", "worker_of_key"]

ROUTINGS = ("exchange", "partition")
"""``exchange``: every shard batch goes to the worker Bytewax hashes its shard to.
``partition``: each shard stays in the process reading the input partition its accounts
come from (the input must be partitioned by ``murmur2(account)``, see `streamml.state.sharding`)."""

_MASK = (1 << 64) - 1


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _MASK


def _round(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
    v0 = (v0 + v1) & _MASK
    v1 = _rotl(v1, 13) ^ v0
    v0 = _rotl(v0, 32)
    v2 = (v2 + v3) & _MASK
    v3 = _rotl(v3, 16) ^ v2
    v0 = (v0 + v3) & _MASK
    v3 = _rotl(v3, 21) ^ v0
    v2 = (v2 + v1) & _MASK
    v1 = _rotl(v1, 17) ^ v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


def siphash13(data: bytes, k0: int = 0, k1: int = 0) -> int:
    """Return SipHash-1-3 of `data` (Rust's `DefaultHasher` with keys `k0`, `k1`)."""
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573
    n = len(data)
    whole = n - n % 8
    for i in range(0, whole, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v3 ^= m
        v0, v1, v2, v3 = _round(v0, v1, v2, v3)
        v0 ^= m
    m = ((n & 0xFF) << 56) | int.from_bytes(data[whole:], "little")
    v3 ^= m
    v0, v1, v2, v3 = _round(v0, v1, v2, v3)
    v0 ^= m
    v2 ^= 0xFF
    for _ in range(3):
        v0, v1, v2, v3 = _round(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def worker_of_key(key: str, workers: int) -> int:
    """Return the worker (0..workers-1) Bytewax 0.21 runs the state of `key` on."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    return siphash13(key.encode() + b"\xff") % workers


@lru_cache(maxsize=65536)
def key_on_worker(shard: int, worker: int, workers: int) -> str:
    """Return the first of ``shard-NNN``, ``shard-NNN.1``, ... that Bytewax routes to `worker`."""
    if not 0 <= worker < workers:
        raise ValueError(f"worker must be in [0, {workers}), got {worker}")
    base = f"shard-{shard:03d}"
    key, n = base, 0
    while worker_of_key(key, workers) != worker:
        n += 1
        key = f"{base}.{n}"
    return key


@dataclass(frozen=True, slots=True)
class PartitionRouting:
    """The worker of this process and the worker count: keys that keep shards where read."""

    worker: int = 0
    workers: int = 1

    def __post_init__(self) -> None:
        if self.workers < 1 or not 0 <= self.worker < self.workers:
            raise ValueError(
                f"worker index must be in [0, workers) with workers >= 1, got worker "
                f"{self.worker} of {self.workers}"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PartitionRouting:
        """Read ``STREAMML_PROCESS_ID`` and ``STREAMML_PROCESSES`` (default: 0 of 1).

        Without them, Bytewax's own ``BYTEWAX_PROCESS_ID`` and ``BYTEWAX_ADDRESSES`` (one
        worker per process).
        """
        env = os.environ if env is None else env
        addresses = env.get("BYTEWAX_ADDRESSES") or ""
        worker = int(env.get("STREAMML_PROCESS_ID") or env.get("BYTEWAX_PROCESS_ID") or 0)
        workers = int(env.get("STREAMML_PROCESSES") or len(addresses.split(";")) or 1)
        return cls(worker, workers)

    def key(self, shard: int) -> str:
        """Return the key that keeps `shard`'s state on this worker."""
        return key_on_worker(shard, self.worker, self.workers)
