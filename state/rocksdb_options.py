"""RocksDB settings of the state databases of one process: memory budget, blocks, compression.

`StoreTuning` holds them; `_options` turns them into rocksdict `Options` whose block cache and
write buffer manager (`MemoryBudget`) are shared by every database the process opens with the
same budget, and `open_db` opens a database with them (the rolling state, on-demand answers, the
outcome join).
"""

from __future__ import annotations

import os
import re
import threading
import time
import weakref
from dataclasses import dataclass

from rocksdict import (
    BlockBasedOptions,
    Cache,
    DbClosedError,
    DBCompressionType,
    Options,
    Rdict,
    WriteBufferManager,
)
from streamml.state.value_codec import CODECS

__all__ = ["MemoryBudget", "StoreTuning", "memory_budget", "open_db", "table_bytes"]


@dataclass(frozen=True, slots=True)
class StoreTuning:
    """RocksDB memory settings of the databases of one process.

    Every database a process opens with equal settings shares one block cache of
    `memory_bytes`, and their memtables are charged to that cache by one write buffer manager
    (which flushes the largest memtable once all of them together hold `memory_bytes / 4`). So
    RocksDB's memory in a process stays within `memory_bytes` whatever the number of shards or
    records: without the budget each shard had its own cache and memtables, up to 16 x 64 MiB,
    filled at about 125 bytes per event read from Kafka (one rewritten account record each).
    The cache holds no more blocks than the state's table files (`MemoryBudget`).
    `write_buffer_bytes` bounds one memtable.

    `block_bytes` is the size of a data block before compression. A read that misses the block
    cache reads, checks and decompresses a whole block; a batch reads a shard's accounts in one
    sorted multi-get, so accounts of one batch that share a block share that work. With state
    much larger than the cache (millions of accounts drawn uniformly) 16 KiB blocks cost fewer
    CPU-microseconds per event than RocksDB's 4 KiB (benchmarks/RESULTS.md, "10M distinct
    accounts"); a block only changes what new files are written with, so any existing state
    reads as before.

    `codec` is the value codec a database gets when this process writes its first account
    records (``sparse`` or ``raw``, see `streamml.state.rolling_store`); a database that has one
    keeps it.

    `compression` is RocksDB's block compression: ``lz4`` or ``none``.
    """

    memory_bytes: int = 256 << 20
    write_buffer_bytes: int = 16 << 20
    max_write_buffers: int = 2
    block_bytes: int = 16 << 10
    codec: str = "sparse"
    compression: str = "lz4"

    def __post_init__(self) -> None:
        """Check the sizes and names."""
        if self.codec not in CODECS:
            raise ValueError(f"StoreTuning: codec must be sparse or raw, got {self.codec!r}")
        if self.compression not in ("lz4", "none"):
            raise ValueError(
                f"StoreTuning: compression must be lz4 or none, got {self.compression!r}"
            )
        if self.memory_bytes < 1 << 20 or self.write_buffer_bytes < 64 << 10:
            raise ValueError(
                "StoreTuning: expected memory_bytes >= 1 MiB and write_buffer_bytes >= 64 KiB, "
                f"got {self.memory_bytes} and {self.write_buffer_bytes}"
            )
        if not 1 << 10 <= self.block_bytes <= 4 << 20:
            raise ValueError(
                f"StoreTuning: expected block_bytes in [1 KiB, 4 MiB], got {self.block_bytes}"
            )


_MEMTABLE_BLOOM_RATIO = 0.1
"""Share of each memtable's size given to its whole-key bloom filter."""


_MIN_BLOCK_CACHE_BYTES = 16 << 20
_RESIZE_INTERVAL_S = 1.0
_TABLE_BYTES = re.compile(
    r"raw key size=(\d+);.*raw value size=(\d+);.*index block size[^=]*=(\d+); "
    r"filter block size=(\d+)"
)


def table_bytes(db: Rdict) -> int:
    """Return the bytes the table files of `db` take in a block cache (0 if it is closed).

    Their keys and values before compression, plus their index and filter blocks, from RocksDB's
    table properties (which count the versions compaction has not dropped yet).
    """
    try:
        props = db.property_value("rocksdb.aggregated-table-properties")
    except DbClosedError:
        return 0
    match = _TABLE_BYTES.search(props or "")
    return sum(int(g) for g in match.groups()) if match else 0


class MemoryBudget:
    """The RocksDB memory of one process for one `memory_bytes`, shared by its databases.

    A block cache, and a write buffer manager that charges every memtable to that cache. A quarter
    of the budget is for memtables. The rest is for blocks, but the cache is sized down to the
    table data of the stores it serves (at least 16 MiB), checked at most once a second as they
    write (`tick`). Every block a read can load belongs to a current table file, so that is room
    for all of them; but RocksDB leaves the blocks of a table file in the cache after compaction
    replaced the file, and with state smaller than the budget these blocks, which nobody reads
    again, filled the whole cache over a long run (the RSS of the Kafka flow rose by 200 MiB from
    1M to 10M records at the default budget). A state larger than the budget gets all of it.
    """

    def __init__(self, memory_bytes: int) -> None:
        self.memory_bytes = memory_bytes
        self.memtable_bytes = memory_bytes // 4
        self.cache = Cache(memory_bytes)
        self.manager = WriteBufferManager.new_write_buffer_manager_with_cache(
            self.memtable_bytes, False, self.cache
        )
        self.capacity = memory_bytes
        self._stores: weakref.WeakSet = weakref.WeakSet()
        self._next_resize = 0.0
        self._lock = threading.Lock()

    def watch(self, store: object) -> None:
        """Size the cache for `store` too: an object whose `databases()` returns its open Rdicts.

        The budget keeps no reference to it.
        """
        self._stores.add(store)

    def tick(self) -> None:
        """Resize the cache if the last resize is more than a second old."""
        now = time.monotonic()
        if now >= self._next_resize:
            self._next_resize = now + _RESIZE_INTERVAL_S
            self.resize()

    def resize(self) -> int:
        """Size the cache to the table data of the watched stores now; return its capacity."""
        with self._lock:
            seen: set[int] = set()
            data = 0
            for store in list(self._stores):
                for db in store.databases():
                    if id(db) not in seen:
                        seen.add(id(db))
                        data += table_bytes(db)
            blocks = max(_MIN_BLOCK_CACHE_BYTES, data)
            capacity = self.memtable_bytes + min(self.memory_bytes - self.memtable_bytes, blocks)
            if capacity != self.capacity:
                self.cache.set_capacity(capacity)
                self.capacity = capacity
            return capacity


_BUDGETS: dict[int, MemoryBudget] = {}
"""The memory budget of each `memory_bytes`, shared by the databases of this process."""
_BUDGETS_LOCK = threading.Lock()


def memory_budget(tuning: StoreTuning) -> MemoryBudget:
    """Return this process's memory budget for `tuning` (created on first use)."""
    with _BUDGETS_LOCK:
        budget = _BUDGETS.get(tuning.memory_bytes)
        if budget is None:
            budget = _BUDGETS[tuning.memory_bytes] = MemoryBudget(tuning.memory_bytes)
        return budget


def _options(tuning: StoreTuning, *, create: bool) -> Options:
    budget = memory_budget(tuning)
    opts = Options(raw_mode=True)
    opts.create_if_missing(create)
    opts.set_write_buffer_size(tuning.write_buffer_bytes)
    opts.set_max_write_buffer_number(tuning.max_write_buffers)
    opts.set_write_buffer_manager(budget.manager)
    # Most reads of a state larger than the memtables miss them: a whole-key bloom filter per
    # memtable answers those without searching its skiplist.
    opts.set_memtable_prefix_bloom_ratio(_MEMTABLE_BLOOM_RATIO)
    opts.set_memtable_whole_key_filtering(True)
    if tuning.compression == "lz4":
        opts.set_compression_type(DBCompressionType.lz4())
    else:
        opts.set_compression_type(DBCompressionType.none())
    opts.set_max_background_jobs(2)
    table = BlockBasedOptions()
    table.set_block_cache(budget.cache)
    table.set_block_size(tuning.block_bytes)
    table.set_bloom_filter(10, False)
    table.set_cache_index_and_filter_blocks(True)
    table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    opts.set_block_based_table_factory(table)
    return opts


def open_db(path: str | os.PathLike[str], options: Options, access_type=None) -> Rdict:
    """Open the RocksDB database at `path` with `options` (its block cache, filters, memory).

    The options are given for the default column family too: without them, rocksdict opens an
    existing database with the column family options stored in its OPTIONS file, and so with
    RocksDB's default table settings (its own 8 MiB block cache, no bloom filter) instead of the
    shared budget.
    """
    families = {"default": options}
    if access_type is None:
        return Rdict(str(path), options, column_families=families)
    return Rdict(str(path), options, column_families=families, access_type=access_type)
