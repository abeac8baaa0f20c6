"""Split event batches by account shard, so each account's state lives on one worker.

Two routings (`streamml.operators.routing.ROUTINGS`):

- ``exchange`` (the general case): each sub-batch is keyed ``shard-NNN`` and Bytewax moves it
  to the worker it hashes the key to, in whichever process that is.
- ``partition``: for input already partitioned by account with Kafka's default partitioner
  (``murmur2(account) mod P`` over P partitions, P dividing the shard count, the layout's
  `shard_hash` ``murmur2``), every account of shard s arrives on partition ``s mod P``. Each
  sub-batch is keyed so that Bytewax keeps it on the worker that read it
  (`streamml.operators.routing.key_on_worker`): no shard batch crosses processes. An account
  that arrives on another partition than its shard's is refused (`RefusedError`, naming the
  account, its partition and the expected one) before any of its batch is applied: counts are
  never split between two owners of one shard.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pyarrow as pa
from bytewax import operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream
from streamml.operators.records import EventBatch
from streamml.operators.routing import PartitionRouting
from streamml.state.errors import RefusedError
from streamml.state.sharding import shard_many

__all__ = ["PartitionOwner", "shard_events", "shard_key", "shard_of_key", "split_by_shard"]

PartitionOwner = Callable[[str], tuple[int, int]]
"""Maps a source partition's name to (its index, the source's partition count)."""


def shard_key(shard: int) -> str:
    """Return the stream key of a shard."""
    return f"shard-{shard:03d}"


def shard_of_key(key: str) -> int:
    """Return the shard of a stream key (``shard-NNN``, or ``shard-NNN.K``: partition routing)."""
    return int(key.rsplit("-", 1)[1].split(".", 1)[0])


def _check_owned(batch: EventBatch, shard_of_code: np.ndarray, dictionary, index: int, count: int):
    wrong = np.flatnonzero(shard_of_code % count != index)
    if len(wrong):
        account = dictionary[int(wrong[0])].as_py()
        if isinstance(account, bytes):
            account = account.decode("utf-8", "replace")
        shard = int(shard_of_code[wrong[0]])
        raise RefusedError(
            f"account {account!r} arrived on input partition {batch.partition} (index {index} "
            f"of {count}), but its shard {shard} is fed by partition index {shard % count}: this "
            "input is not partitioned by Kafka's default key partitioner (murmur2 of the "
            f"account mod {count}; files in that order). {len(wrong)} of the batch's "
            f"{len(dictionary)} accounts are on another partition. Nothing of this batch was "
            "applied. Run with --routing exchange (the default), or partition the input by "
            "account with `streamml generate --files N --by-key` / a keyed Kafka producer"
        )


def split_by_shard(
    batch: EventBatch,
    shards: int,
    *,
    shard_hash: str = "crc32",
    key: Callable[[int], str] = shard_key,
    owner: tuple[int, int] | None = None,
) -> list[tuple[str, EventBatch]]:
    """Split a batch into one sub-batch per shard, each keeping source order.

    Every shard gets a sub-batch carrying the batch's `through` position, empty when none of the
    events are its own, so every shard records how far the source has been applied. With
    `owner` (the batch's partition index and the partition count, partition routing) only the
    shards that partition feeds (``s mod count == index``) get one, and an account of another
    shard is refused with `RefusedError`. `key` names each shard's sub-batch.

    Each sub-batch carries its accounts as a dictionary array whose dictionary holds exactly the
    distinct accounts of that sub-batch, so the rolling count reads each account's state once
    without hashing the strings again, and a sub-batch sent to another process carries only its
    own accounts.
    """
    origin = os.getpid()
    targets = range(shards) if owner is None else range(owner[0], shards, owner[1])
    if not len(batch):
        if batch.through < 0:
            return []
        return [(key(s), replace(batch, shard=s, origin=origin)) for s in targets]
    encoded = batch.accounts.dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    dictionary = encoded.dictionary
    shard_of_code = shard_many(dictionary, shards, shard_hash)
    if owner is not None:
        _check_owned(batch, shard_of_code, dictionary, *owner)
    # Number the distinct accounts of each shard 0, 1, 2, ... in dictionary order.
    by_shard = np.argsort(shard_of_code, kind="stable")
    code_shards = shard_of_code[by_shard]
    code_cuts = np.flatnonzero(np.diff(code_shards)) + 1
    local = np.empty(len(dictionary), dtype=np.int32)
    starts = np.concatenate([[0], code_cuts])
    local[by_shard] = np.arange(len(by_shard)) - np.repeat(
        starts, np.diff(np.append(starts, len(by_shard)))
    )
    shard = shard_of_code[codes]
    order = np.argsort(shard, kind="stable")
    cuts = np.flatnonzero(np.diff(shard[order])) + 1
    groups = dict(zip(code_shards[starts].tolist(), np.split(by_shard, code_cuts), strict=True))
    out = []
    present = set()
    for idx in np.split(order, cuts):
        s = int(shard[idx[0]])
        present.add(s)
        accounts = pa.DictionaryArray.from_arrays(
            pa.array(local[codes[idx]], type=pa.int32()), dictionary.take(pa.array(groups[s]))
        )
        fields = {k: v[idx] for k, v in batch.fields.items()}
        sub = EventBatch(
            batch.partition,
            accounts,
            batch.ts[idx],
            batch.positions[idx],
            s,
            batch.through,
            fields,
            origin,
        )
        out.append((key(s), sub))
    if batch.through >= 0 and len(present) < len(targets):
        empty = batch.positions[:0]
        none = pa.array([], pa.binary())
        for s in targets:
            if s not in present:
                fields = {k: v[:0] for k, v in batch.fields.items()}
                sub = EventBatch(
                    batch.partition, none, batch.ts[:0], empty, s, batch.through, fields, origin
                )
                out.append((key(s), sub))
    return out


class _PartitionSplit:
    """Split by shard with keys that keep every sub-batch on this worker (partition routing)."""

    def __init__(self, shards: int, shard_hash: str, owner_of: PartitionOwner) -> None:
        self.shards = shards
        self.shard_hash = shard_hash
        self.owner_of = owner_of
        self.routing: PartitionRouting | None = None
        self.owners: dict[str, tuple[int, int]] = {}

    def __call__(self, batch: EventBatch) -> list[tuple[str, EventBatch]]:
        if self.routing is None:
            # Read when the flow runs, in the worker process (not when the flow is built).
            self.routing = PartitionRouting.from_env()
        owner = self.owners.get(batch.partition)
        if owner is None:
            owner = self.owners[batch.partition] = self.owner_of(batch.partition)
            count = owner[1]
            if self.shards % count:
                raise RefusedError(
                    f"partition routing needs the shard count ({self.shards}) to be a multiple "
                    f"of the input's partition count ({count}); use a state dir with "
                    f"--shards {count * max(1, self.shards // count)} or --routing exchange"
                )
        return split_by_shard(
            batch, self.shards, shard_hash=self.shard_hash, key=self.routing.key, owner=owner
        )


@operator
def shard_events(
    step_id: str,
    up: Stream[EventBatch],
    shards: int,
    shard_hash: str = "crc32",
    owner_of: PartitionOwner | None = None,
) -> KeyedStream[EventBatch]:
    """Key every event by its account's shard (`streamml.state.sharding`), a sub-batch per shard.

    Without `owner_of` the keys are ``shard-NNN`` (exchange routing). With it (partition
    routing, `shard_hash` must be ``murmur2``), `owner_of` gives each source partition's index
    and the partition count, and each sub-batch stays on the worker that read it.
    """
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    if owner_of is None:
        return op.flat_map("split", up, lambda b: split_by_shard(b, shards, shard_hash=shard_hash))
    if shard_hash != "murmur2":
        raise RefusedError(
            "partition routing needs a state dir whose accounts are sharded by murmur2 (Kafka's "
            f"default key partitioner), but it shards by {shard_hash}: create the state dir "
            "with --shard-hash murmur2, or use --routing exchange"
        )
    return op.flat_map("split", up, _PartitionSplit(shards, shard_hash, owner_of))
