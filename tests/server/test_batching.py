"""TickBatcher: what is submitted in one event-loop turn runs as one batch."""

from __future__ import annotations

import asyncio

import pytest

from streamml.server.batching import TickBatcher


def test_one_batch_per_turn_and_errors_reach_every_caller() -> None:
    seen: list[list[int]] = []

    def double(items: list[int]) -> list[int]:
        seen.append(items)
        if -1 in items:
            raise ValueError("refused")
        return [2 * i for i in items]

    async def main() -> None:
        batcher = TickBatcher(double)
        assert await asyncio.gather(*(batcher.submit(i) for i in range(5))) == [0, 2, 4, 6, 8]
        assert await batcher.submit(7) == 14
        with pytest.raises(ValueError, match="refused"):
            await asyncio.gather(batcher.submit(-1), batcher.submit(3))
        assert batcher.largest == 5

    asyncio.run(main())
    assert seen[:2] == [[0, 1, 2, 3, 4], [7]]
