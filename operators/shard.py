"""Split event batches by account shard, so each account's state lives on one worker."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from bytewax import operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream

from operators.records import EventBatch
from state.sharding import hash_many

__all__ = ["shard_events", "shard_key", "split_by_shard"]


def shard_key(shard: int) -> str:
    """Return the stream key of a shard."""
    return f"shard-{shard:03d}"


def split_by_shard(batch: EventBatch, shards: int) -> list[tuple[str, EventBatch]]:
    """Split a batch into one sub-batch per shard present, each keeping source order.

    The sub-batches carry their accounts dictionary-encoded against the whole batch's accounts,
    so the rolling count finds each account's records without hashing the strings again.
    """
    if not len(batch):
        return []
    encoded = batch.accounts.dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    shard_of_code = (hash_many(encoded.dictionary) % np.uint64(shards)).astype(np.int64)
    shard = shard_of_code[codes]
    if shards == 1 or (shard == shard[0]).all():
        s = int(shard[0])
        return [(shard_key(s), _with_shard(batch, encoded, s))]
    order = np.argsort(shard, kind="stable")
    sorted_shards = shard[order]
    cuts = np.flatnonzero(np.diff(sorted_shards)) + 1
    out = []
    for idx in np.split(order, cuts):
        s = int(shard[idx[0]])
        sub = EventBatch(
            batch.partition,
            encoded.take(pa.array(idx)),
            batch.ts[idx],
            batch.positions[idx],
            s,
        )
        out.append((shard_key(s), sub))
    return out


def _with_shard(batch: EventBatch, accounts: pa.Array, shard: int) -> EventBatch:
    return EventBatch(batch.partition, accounts, batch.ts, batch.positions, shard)


@operator
def shard_events(step_id: str, up: Stream[EventBatch], shards: int) -> KeyedStream[EventBatch]:
    """Key every event by its account's shard (`state.sharding`), one sub-batch per shard."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    return op.flat_map("split", up, lambda b: split_by_shard(b, shards))
