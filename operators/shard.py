"""Split event batches by account shard, so each account's state lives on one worker."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa
from bytewax import operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import KeyedStream
from streamml.operators.records import EventBatch
from streamml.state.sharding import hash_many

__all__ = ["shard_events", "shard_key", "split_by_shard"]


def shard_key(shard: int) -> str:
    """Return the stream key of a shard."""
    return f"shard-{shard:03d}"


def split_by_shard(batch: EventBatch, shards: int) -> list[tuple[str, EventBatch]]:
    """Split a batch into one sub-batch per shard, each keeping source order.

    Every shard gets a sub-batch carrying the batch's `through` position, empty when none of the
    events are its own, so every shard records how far the source has been applied.

    Each sub-batch carries its accounts as a dictionary array whose dictionary holds exactly the
    distinct accounts of that sub-batch, so the rolling count reads each account's state once
    without hashing the strings again, and a sub-batch sent to another process carries only its
    own accounts.
    """
    if not len(batch):
        if batch.through < 0:
            return []
        return [(shard_key(s), replace(batch, shard=s)) for s in range(shards)]
    encoded = batch.accounts.dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    dictionary = encoded.dictionary
    shard_of_code = (hash_many(dictionary) % np.uint64(shards)).astype(np.int64)
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
            batch.partition, accounts, batch.ts[idx], batch.positions[idx], s, batch.through, fields
        )
        out.append((shard_key(s), sub))
    if batch.through >= 0 and len(present) < shards:
        empty = batch.positions[:0]
        none = pa.array([], pa.binary())
        for s in range(shards):
            if s not in present:
                fields = {k: v[:0] for k, v in batch.fields.items()}
                sub = EventBatch(
                    batch.partition, none, batch.ts[:0], empty, s, batch.through, fields
                )
                out.append((shard_key(s), sub))
    return out


@operator
def shard_events(step_id: str, up: Stream[EventBatch], shards: int) -> KeyedStream[EventBatch]:
    """Key every event by its account's shard (`streamml.state.sharding`), a sub-batch per shard."""
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    return op.flat_map("split", up, lambda b: split_by_shard(b, shards))
