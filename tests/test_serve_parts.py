"""The server's parts on their own: the asyncio batcher and the byte-bounded cache."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import torch

from cleandift_deploy.serve.batcher import Batcher
from cleandift_deploy.serve.cache import ByteLRU, content_id, is_content_id, nbytes

LONG_WAIT_MS = 60_000.0


class Recorder:
    """A model stand-in: doubles its inputs and remembers the batches it saw."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.fail_on = fail_on

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        if self.fail_on in items:
            raise ValueError(f"bad item {self.fail_on}")
        return [2 * item for item in items]


def test_a_lone_request_does_not_wait_for_the_batch_window() -> None:
    model = Recorder()
    batcher = Batcher(model, max_batch=8, wait_ms=LONG_WAIT_MS)

    async def one() -> int:
        return await asyncio.wait_for(batcher(3), timeout=20)

    assert asyncio.run(one()) == 6 and model.batches == [[3]]


def test_announced_requests_join_the_batch_and_others_do_not() -> None:
    """A request still reading its body (`arriving`) is waited for; one nobody announced runs
    in the next batch."""
    model = Recorder()
    batcher = Batcher(model, max_batch=8, wait_ms=LONG_WAIT_MS)

    async def late(item: int, announced: bool) -> int:
        if not announced:
            await asyncio.sleep(0.05)
            return await batcher(item)
        with batcher.arriving(1):
            await asyncio.sleep(0.05)  # reading and decoding the body
            return await batcher(item)

    async def scenario(announced: bool) -> list[int]:
        return list(await asyncio.gather(batcher(1), batcher(2), late(3, announced)))

    assert asyncio.run(scenario(True)) == [2, 4, 6] and model.batches == [[1, 2, 3]]
    model.batches.clear()
    assert asyncio.run(scenario(False)) == [2, 4, 6] and model.batches == [[1, 2], [3]]


def test_max_batch_bounds_a_batch() -> None:
    model = Recorder()
    batcher = Batcher(model, max_batch=3, wait_ms=LONG_WAIT_MS)

    async def many() -> list[int]:
        return list(await asyncio.gather(*(batcher(i) for i in range(7))))

    assert asyncio.run(many()) == [2 * i for i in range(7)]
    assert [len(b) for b in model.batches] == [3, 3, 1]


def test_a_failing_batch_fails_its_callers_and_the_next_batch_runs() -> None:
    model = Recorder(fail_on=2)
    batcher = Batcher(model, max_batch=8, wait_ms=0.0)

    async def scenario() -> tuple[list[object], int]:
        failed = await asyncio.gather(batcher(1), batcher(2), return_exceptions=True)
        return list(failed), await batcher(5)

    failed, after = asyncio.run(scenario())
    assert all(isinstance(f, ValueError) for f in failed) and after == 10


def test_cache_never_holds_more_than_its_limit() -> None:
    cache = ByteLRU(limit=1000)
    for index in range(5):
        assert cache.put(("image", index), np.zeros(300, np.uint8))
    assert cache.snapshot()["bytes"] == 900 and cache.snapshot()["evictions"] == 2
    assert cache.get(("image", 0)) is None and cache.get(("image", 4)) is not None
    cache.get(("image", 2))  # used: now the newest
    cache.put("big", torch.zeros(100))  # 400 bytes: evicts the least recently used, image 3
    assert ("image", 2) in cache and ("image", 3) not in cache and ("image", 4) in cache
    assert cache.snapshot()["bytes"] == 1000
    assert not cache.put("huge", np.zeros(1001, np.uint8)) and "huge" not in cache
    assert cache.snapshot()["bytes"] <= 1000


def test_sizes_and_ids() -> None:
    assert nbytes({"a": torch.zeros(4, 2), "b": [np.zeros(3, np.float64)], "c": "text"}) == 56
    image_id = content_id(b"some bytes")
    assert is_content_id(image_id) and image_id != content_id(b"other bytes")
    for bad in ("../etc/passwd", image_id.upper(), image_id[:-1], 7):
        assert not is_content_id(bad)


@pytest.mark.parametrize("limit", [0, 10])
def test_an_entry_over_the_limit_is_not_kept(limit: int) -> None:
    cache = ByteLRU(limit)
    assert not cache.put("x", np.zeros(11, np.uint8)) and cache.snapshot()["entries"] == 0
