"""Dynamic batching on asyncio: single images in, model runs over up to `max_batch` of them.

Each call puts its item on a queue and awaits its result. One worker task per event loop takes
the first waiting item, then keeps collecting until the batch holds `max_batch` items or
`batch_wait_ms` has passed, runs the model on the batch in a worker thread, and hands every
caller its own result (or the batch's exception). The worker waits for more items only while more
requests are on their way (`arriving()`: requests still reading or decoding their body), so a lone
request at concurrency 1 runs at once instead of paying the batch window. While a batch runs, new
items queue and form the next batch: at concurrency 8 with `max_batch` 8 the model sees batches.
This is the batching of the local server and of each Ray Serve replica alike.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")
POLL_S = 0.0005
"""How often a filling batch looks for newly queued items while requests are arriving."""


@dataclass
class _Ticket:
    """Images a request announced and has not queued yet."""

    left: int


_TICKET: ContextVar[_Ticket | None] = ContextVar("batch_ticket", default=None)


class Batcher(Generic[In, Out]):
    """`await batcher(item)` -> that item's result from `run(batch)`."""

    def __init__(self, run: Callable[[list[In]], list[Out]], max_batch: int, wait_ms: float):
        self.run = run
        self.max_batch = max_batch
        self.wait_s = wait_ms / 1000.0
        self._arriving = 0
        self._queue: asyncio.Queue[tuple[In, asyncio.Future[Out]]] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @contextmanager
    def arriving(self, items: int = 1) -> Iterator[None]:
        """Mark a request that will queue `items` images soon (while it reads and decodes its
        body): a filling batch waits for them, up to the batch window."""
        ticket = _Ticket(items)
        self._arriving += items
        token = _TICKET.set(ticket)
        try:
            yield
        finally:
            _TICKET.reset(token)
            self._arriving -= ticket.left

    def _start(self) -> asyncio.Queue[tuple[In, asyncio.Future[Out]]]:
        loop = asyncio.get_running_loop()
        if self._queue is None or self._loop is not loop or self._worker is None:
            self._queue, self._loop = asyncio.Queue(), loop
            self._worker = loop.create_task(self._work(self._queue))
        return self._queue

    async def __call__(self, item: In) -> Out:
        """Queue one item and wait for its result."""
        future: asyncio.Future[Out] = asyncio.get_running_loop().create_future()
        ticket = _TICKET.get()
        if ticket is not None and ticket.left > 0:
            ticket.left -= 1
            self._arriving -= 1
        self._start().put_nowait((item, future))
        return await future

    async def _collect(
        self, queue: asyncio.Queue[tuple[In, asyncio.Future[Out]]]
    ) -> list[tuple[In, asyncio.Future[Out]]]:
        batch = [await queue.get()]
        deadline = asyncio.get_running_loop().time() + self.wait_s
        while len(batch) < self.max_batch:
            if not queue.empty():
                batch.append(queue.get_nowait())
                continue
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0 or self._arriving == 0:
                break
            await asyncio.sleep(min(left, POLL_S))
        return batch

    async def _work(self, queue: asyncio.Queue[tuple[In, asyncio.Future[Out]]]) -> None:
        while True:
            batch = await self._collect(queue)
            try:
                results = await asyncio.to_thread(self.run, [item for item, _ in batch])
            except Exception as err:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(err)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
