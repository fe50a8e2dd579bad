"""The TensorRT backend's context and graph bookkeeping, run with fake engine, context, stream,
graph and allocator objects (no GPU, no TensorRT): which context a shape uses, that a captured
context is never re-bound, fallback to eager runs when a capture is invalidated, the bounds on
lanes and contexts, that nothing is allocated while work goes on a lane's stream, the order of
teardown (sync, graphs and contexts, memory, then the stream), the readers-writer lock, and
TensorRT's checked booleans and alignment rule. The same pool on a real GPU with a torch
stand-in for the engine: tests/test_cuda_lanes_gpu.py."""

from __future__ import annotations

import contextlib
import gc
import threading
import time
import weakref
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch

from cleandift_deploy.errors import CleanDiftError
from cleandift_deploy.runtime.cuda_graphs import CaptureInvalidated
from cleandift_deploy.runtime.trt_contexts import (
    ContextPool,
    Lane,
    ReadWriteLock,
    check,
    close_lanes,
    is_aligned,
    shape_key,
)


class FakeContext:
    """Computes out = 2 * x + 1 for whatever shapes it is bound to; counts re-binds."""

    def __init__(self, memory: object, log: list[str]) -> None:
        self.memory = memory
        self.binds = 0
        self.block: Block | None = None
        self.x: torch.Tensor | None = None
        self.out: torch.Tensor | None = None
        weakref.finalize(self, log.append, "context dropped")

    def run(self) -> None:
        assert self.x is not None and self.out is not None
        self.out.copy_(self.x * 2 + 1)


class FakeStream:
    """A lane stream: counts synchronisations, logs them."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name = name
        self.log = log
        self.syncs = 0

    def synchronize(self) -> None:
        self.syncs += 1
        self.log.append(f"sync {self.name}")


class FakeGraph:
    """The context's run, recorded at capture and repeated at replay, like a CUDA graph."""

    def __init__(self, context: FakeContext, log: list[str]) -> None:
        self.context = context
        self.log = log
        self.replays = 0
        self.closed = False

    def replay(self) -> None:
        assert not self.closed
        self.replays += 1
        self.context.run()

    def close(self) -> None:
        self.closed = True
        self.log.append("graph closed")


class Block:
    """A fake allocator block: which stream was current when it was allocated."""

    def __init__(self, stream: str, log: list[str], what: str = "memory") -> None:
        self.stream = stream
        weakref.finalize(self, log.append, f"{what} freed ({stream})")


class FakeOps:
    """An engine that counts what the pool asks of it and checks the rules it must keep: no
    allocation while a lane's stream is current, a join before every launch."""

    def __init__(self, fail_capture: bool = False, delay: float = 0.0, keep: bool = True) -> None:
        self.keep = keep  # keep contexts and graphs for inspection (else they die with the pool)
        self.fail_capture = fail_capture
        self.delay = delay
        self.log: list[str] = []
        self.contexts: list[FakeContext] = []
        self.graphs: list[FakeGraph] = []
        self.allocations: list[str] = []
        self.current = threading.local()
        self.joined: set[int] = set()
        self.active = 0
        self.most_active = 0
        self.guard = threading.Lock()

    def stream_now(self) -> str:
        return getattr(self.current, "stream", "caller")

    def allocate(self, what: str = "memory") -> Block:
        self.allocations.append(self.stream_now())
        return Block(self.stream_now(), self.log, what)

    def new_lane(self, index: int) -> Lane:
        stream = FakeStream(f"lane-{index}", self.log)
        destroy = f"destroy {stream.name}"
        scratch = self.allocate("scratch")
        return Lane(index, stream, scratch, release=lambda: self.log.append(destroy))

    def new_context(self, lane: Lane) -> FakeContext:
        context = FakeContext(lane.memory, self.log)
        if self.keep:
            self.contexts.append(context)
        return context

    def bind(self, context: Any, lane: Lane, inputs: Mapping[str, torch.Tensor]) -> dict:
        assert not any(g.context is context for g in self.graphs), "a captured context re-bound"
        context.block = self.allocate()
        context.binds += 1
        context.x = inputs["x"]
        context.out = torch.empty_like(inputs["x"])
        self.joined.discard(lane.index)  # new memory: the lane must wait for it again
        return {"out": context.out}

    def join(self, lane: Lane) -> None:
        self.joined.add(lane.index)

    @contextlib.contextmanager
    def launching(self, lane: Lane) -> Iterator[None]:
        assert lane.index in self.joined, "launch on a lane that did not wait for the caller"
        self.current.stream = lane.stream.name
        try:
            yield
        finally:
            self.current.stream = "caller"

    def execute(self, context: Any, lane: Lane) -> None:
        assert lane.index in self.joined, "execute on a lane that did not wait for the caller"
        with self.guard:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        time.sleep(self.delay)
        context.run()
        with self.guard:
            self.active -= 1

    def synchronize(self, lane: Lane) -> None:
        lane.stream.synchronize()

    def capture(self, context: Any, lane: Lane) -> FakeGraph:
        graph = FakeGraph(context, self.log)
        if self.keep:
            self.graphs.append(graph)
        if self.fail_capture:
            raise CaptureInvalidated("stream capture gave no graph (CUDA error 901)")
        return graph


def _run(pool: ContextPool, x: torch.Tensor) -> torch.Tensor:
    with pool.lane() as lane:
        return pool.execute(lane, {"x": x})[0]["out"].clone()


def test_each_shape_has_its_own_context_and_graph() -> None:
    ops = FakeOps()
    pool = ContextPool(ops, lanes=1)
    batches = [torch.randn(n, 3) for n in (1, 2, 1, 2, 2)]
    for x in batches:
        assert torch.equal(_run(pool, x), x * 2 + 1)
    assert len(ops.contexts) == 2 and len(ops.graphs) == 2
    assert [c.binds for c in ops.contexts] == [1, 1]  # bound once, at capture, never re-bound
    assert [g.replays for g in ops.graphs] == [2, 3]
    (lane,) = pool.lanes
    assert all(c.memory is lane.memory for c in ops.contexts)  # one scratch buffer per lane
    assert list(lane.slots) == [shape_key({"x": batches[0]}), shape_key({"x": batches[1]})]


def test_invalidated_capture_falls_back_to_eager_runs_on_the_same_stream() -> None:
    ops = FakeOps(fail_capture=True)
    pool = ContextPool(ops, lanes=1)
    x = torch.randn(2, 3)
    with pytest.warns(RuntimeWarning, match="running TensorRT without graphs"):
        got = _run(pool, x)
    assert torch.equal(got, x * 2 + 1)
    assert not pool.cuda_graphs and "CaptureInvalidated" in str(pool.graph_failure)
    (lane,) = pool.lanes
    assert lane.stream.name == "lane-0" and lane.release is not None  # the stream is kept
    y = torch.randn(3, 3)
    assert torch.equal(_run(pool, y), y * 2 + 1)
    assert torch.equal(_run(pool, x), x * 2 + 1)
    assert len(ops.graphs) == 1  # no capture is tried again
    assert ops.contexts[0] not in [s.context for s in lane.slots.values()]


def test_nothing_is_allocated_while_a_lane_stream_is_current() -> None:
    for graphs in (True, False):
        ops = FakeOps()
        pool = ContextPool(ops, lanes=2, shapes_per_lane=2, cuda_graphs=graphs)
        batches = [torch.randn(1 + n % 3, 3) for n in range(12)]
        with ThreadPoolExecutor(3) as workers:
            list(workers.map(_run, [pool] * len(batches), batches))
        assert ops.allocations and set(ops.allocations) == {"caller"}


def test_lanes_are_torn_down_in_order() -> None:
    ops = FakeOps(keep=False)
    pool = ContextPool(ops, lanes=2, shapes_per_lane=2)
    for n in (1, 2, 3):  # 3 evicts 1: wait, close its graph, drop its context
        _run(pool, torch.randn(n, 3))
    log = ops.log
    evicted = log.index("graph closed")
    assert log[evicted - 1] == "sync lane-0"
    assert log[evicted + 1 : evicted + 3] == ["context dropped", "memory freed (caller)"]
    del log[:]
    lanes = pool.all_lanes
    del pool
    gc.collect()  # the pool is gone, the lanes (all a finaliser holds) are still open
    assert [lane.stream is not None for lane in lanes] == [True]
    close_lanes(lanes)
    assert log[0] == "sync lane-0" and log[-1] == "destroy lane-0"
    assert log.index("graph closed") < log.index("context dropped")
    last_context = max(i for i, e in enumerate(log) if e == "context dropped")
    assert last_context < log.index("scratch freed (caller)") < log.index("destroy lane-0")
    assert lanes[0].stream is None and lanes[0].memory is None and not lanes[0].slots
    close_lanes(lanes)  # a second close (explicit close, then the finaliser) does nothing
    assert log[-1] == "destroy lane-0" and log.count("destroy lane-0") == 1


def test_a_closed_pool_refuses_runs() -> None:
    ops = FakeOps()
    pool = ContextPool(ops, lanes=1)
    _run(pool, torch.randn(2, 3))
    pool.close()
    assert ops.log[-1] == "destroy lane-0"
    with pytest.raises(CleanDiftError, match="closed"):
        _run(pool, torch.randn(2, 3))


def test_without_graphs_contexts_are_bound_per_call() -> None:
    ops = FakeOps()
    pool = ContextPool(ops, lanes=1, cuda_graphs=False)
    for n in (1, 2, 1):
        x = torch.randn(n, 3)
        assert torch.equal(_run(pool, x), x * 2 + 1)
    assert ops.graphs == [] and len(ops.contexts) == 2
    assert [c.binds for c in ops.contexts] == [2, 1]


def test_contexts_per_lane_are_bounded_least_recently_used_first() -> None:
    ops = FakeOps()
    pool = ContextPool(ops, lanes=1, shapes_per_lane=2)
    for n in (1, 2, 1, 3):  # 3 evicts 2, the least recently used
        _run(pool, torch.randn(n, 3))
    (lane,) = pool.lanes
    assert [key[0][1][0] for key in lane.slots] == [1, 3]
    assert lane.stream.syncs >= 4  # warm-ups, and the eviction waited for the lane's stream
    _run(pool, torch.randn(2, 3))
    assert len(ops.contexts) == 4  # 2 came back with a fresh context


def test_lanes_are_bounded_across_threads() -> None:
    ops = FakeOps(delay=0.02)
    pool = ContextPool(ops, lanes=2)
    inputs = [torch.randn(1 + i % 2, 3) for i in range(16)]
    with ThreadPoolExecutor(6) as workers:
        results = list(workers.map(lambda x: _run(pool, x), inputs))
    for x, got in zip(inputs, results, strict=True):
        assert torch.equal(got, x * 2 + 1)
    assert len(pool.lanes) == 2
    assert ops.most_active <= 2
    assert len(ops.contexts) <= 4  # at most (lanes x shapes)


def test_a_writer_excludes_readers_and_other_writers() -> None:
    lock = ReadWriteLock()
    events: list[str] = []

    def reader() -> None:
        with lock.shared():
            events.append("read")

    with lock.exclusive():
        worker = threading.Thread(target=reader)
        worker.start()
        time.sleep(0.05)
        events.append("write-done")
    worker.join(timeout=5)
    assert events == ["write-done", "read"]
    with lock.shared(), lock.shared():
        pass  # readers share


def test_pool_arguments_are_checked() -> None:
    with pytest.raises(CleanDiftError, match="at least 1"):
        ContextPool(FakeOps(), lanes=0)


def test_booleans_and_alignment() -> None:
    check(True, "bind x")
    with pytest.raises(CleanDiftError, match="refused to bind x"):
        check(False, "bind x")
    assert is_aligned(0x7F0000000000) and is_aligned(512)
    assert not is_aligned(0x7F0000000000 + 4) and not is_aligned(0x7F0000000000 + 128)
