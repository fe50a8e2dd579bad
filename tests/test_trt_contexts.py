"""The TensorRT backend's context and graph bookkeeping, run with fake engine, context and graph
objects (no GPU, no TensorRT): which context a shape uses, that a captured context is never
re-bound, fallback to eager runs when a capture raises, the bounds on lanes and contexts, the
readers-writer lock, and TensorRT's checked booleans and alignment rule."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch

from cleandift_deploy.errors import CleanDiftError
from cleandift_deploy.runtime.trt_contexts import (
    ContextPool,
    Lane,
    ReadWriteLock,
    check,
    is_aligned,
    shape_key,
)


class FakeContext:
    """Computes out = 2 * x + 1 for whatever shapes it is bound to; counts re-binds."""

    def __init__(self, memory: object) -> None:
        self.memory = memory
        self.binds = 0
        self.x: torch.Tensor | None = None
        self.out: torch.Tensor | None = None

    def run(self) -> None:
        assert self.x is not None and self.out is not None
        self.out.copy_(self.x * 2 + 1)


class FakeGraph:
    """Records the context's run at capture and repeats it at replay, like a CUDA graph; can
    be told to fail inside the capture."""

    def __init__(self, ops: FakeOps) -> None:
        self.ops = ops
        self.captured: list[FakeContext] = []
        self.began = self.ended = False
        self.replays = 0

    def capture_begin(self, *, capture_error_mode: str) -> None:
        assert capture_error_mode == "thread_local"
        self.began = True
        self.ops.capturing = self

    def capture_end(self) -> None:
        self.ended = True
        self.ops.capturing = None
        if self.ops.fail_capture:
            raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    def replay(self) -> None:
        self.replays += 1
        for context in self.captured:
            context.run()


class FakeOps:
    """An engine that counts what the pool asks of it and checks the rules it must keep."""

    def __init__(self, fail_capture: bool = False, delay: float = 0.0) -> None:
        self.fail_capture = fail_capture
        self.delay = delay
        self.capturing: FakeGraph | None = None
        self.contexts: list[FakeContext] = []
        self.graphs: list[FakeGraph] = []
        self.syncs = 0
        self.streams_renewed = 0
        self.active = 0
        self.most_active = 0
        self.guard = threading.Lock()

    def new_lane(self, index: int) -> Lane:
        return Lane(index, stream=f"stream-{index}", memory=f"memory-{index}")

    def new_context(self, lane: Lane) -> FakeContext:
        context = FakeContext(lane.memory)
        self.contexts.append(context)
        return context

    def bind(self, context: Any, lane: Lane, inputs: Mapping[str, torch.Tensor]) -> dict:
        assert not any(context in g.captured for g in self.graphs), "a captured context re-bound"
        context.binds += 1
        context.x = inputs["x"]
        context.out = torch.empty_like(inputs["x"])
        return {"out": context.out}

    def execute(self, context: Any, lane: Lane) -> None:
        if self.capturing is not None:
            self.capturing.captured.append(context)
            return
        with self.guard:
            self.active += 1
            self.most_active = max(self.most_active, self.active)
        time.sleep(self.delay)
        context.run()
        with self.guard:
            self.active -= 1

    def synchronize(self, lane: Lane) -> None:
        self.syncs += 1

    def new_graph(self) -> FakeGraph:
        graph = FakeGraph(self)
        self.graphs.append(graph)
        return graph

    def renew_stream(self, lane: Lane) -> None:
        self.streams_renewed += 1
        lane.stream = f"{lane.stream}-renewed"


def _run(pool: ContextPool, x: torch.Tensor) -> torch.Tensor:
    with pool.lane() as lane:
        return pool.execute(lane, {"x": x})["out"].clone()


def test_each_shape_has_its_own_context_and_graph() -> None:
    ops = FakeOps()
    pool = ContextPool(ops, lanes=1)
    batches = [torch.randn(n, 3) for n in (1, 2, 1, 2, 2)]
    for x in batches:
        assert torch.equal(_run(pool, x), x * 2 + 1)
    assert len(ops.contexts) == 2 and len(ops.graphs) == 2
    assert [c.binds for c in ops.contexts] == [1, 1]  # bound once, at capture, never re-bound
    assert [g.replays for g in ops.graphs] == [2, 3]
    assert all(c.memory == "memory-0" for c in ops.contexts)  # one scratch buffer per lane
    (lane,) = pool.lanes
    assert list(lane.slots) == [shape_key({"x": batches[0]}), shape_key({"x": batches[1]})]


def test_failed_capture_is_ended_and_the_backend_runs_eagerly() -> None:
    ops = FakeOps(fail_capture=True)
    pool = ContextPool(ops, lanes=1)
    x = torch.randn(2, 3)
    with pytest.warns(RuntimeWarning, match="running TensorRT without graphs"):
        got = _run(pool, x)
    assert torch.equal(got, x * 2 + 1)
    (graph,) = ops.graphs
    assert graph.began and graph.ended and ops.capturing is None
    assert not pool.cuda_graphs and "RuntimeError" in str(pool.graph_failure)
    assert ops.streams_renewed == 1
    y = torch.randn(3, 3)
    assert torch.equal(_run(pool, y), y * 2 + 1)
    assert torch.equal(_run(pool, x), x * 2 + 1)
    assert len(ops.graphs) == 1  # no capture is tried again
    assert ops.contexts[0] not in [s.context for s in pool.lanes[0].slots.values()]


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
    assert ops.syncs >= 4  # warm-ups, and the eviction waited for the lane's stream
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
