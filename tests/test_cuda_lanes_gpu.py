"""CUDA graphs without TensorRT: the backend's lanes, captures, eviction, threads, an invalidated
capture and teardown on a real GPU, with a torch stand-in for the engine (benchmarks/gpu_check.sh
runs these on a lent GPU; they skip elsewhere). The stand-in computes relu(x * w + b) through the
lane's scratch buffer with out= kernels only, so, like a warmed-up TensorRT context on
user-managed memory, it allocates nothing while captured."""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import torch

from cleandift_deploy.runtime.cuda_graphs import CudaRuntime
from cleandift_deploy.runtime.cuda_lanes import CudaLanes
from cleandift_deploy.runtime.trt_contexts import Lane

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CHANNELS = 256
MAX_ROWS = 64


class StandInContext:
    """What a TensorRT context holds: its scratch (the lane's) and bound tensors."""

    def __init__(self, scratch: torch.Tensor) -> None:
        self.scratch = scratch
        self.x: torch.Tensor | None = None
        self.out: torch.Tensor | None = None


class TorchEngine(CudaLanes):
    """A torch stand-in for a TensorRT engine, on the real lanes, pool and capture code."""

    name = "torch-stand-in"

    def __init__(self, device: str = "cuda", *, invalidate: bool = False, **options: Any) -> None:
        super().__init__(device, **options)
        generator = torch.Generator(device=self.device).manual_seed(0)
        self.w = torch.randn(CHANNELS, device=self.device, generator=generator)
        self.b = torch.randn(CHANNELS, device=self.device, generator=generator)
        self.invalidate = invalidate
        self.captures_invalidated = 0

    def scratch_bytes(self) -> int:
        return MAX_ROWS * CHANNELS * 4

    def input_dtype(self, name: str) -> torch.dtype:
        return torch.float32

    def new_context(self, lane: Lane) -> StandInContext:
        return StandInContext(lane.memory)

    def bind(
        self, context: Any, lane: Lane, inputs: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        context.x = inputs["x"]
        context.out = torch.empty_like(inputs["x"])
        return {"out": context.out}

    def execute(self, context: Any, lane: Lane) -> None:
        x, out = context.x, context.out
        tmp = context.scratch[: x.numel() * 4].view(torch.float32).view(x.shape)
        with torch.cuda.stream(lane.stream):
            torch.mul(x, self.w, out=tmp)
            torch.add(tmp, self.b, out=tmp)
            torch.clamp_min(tmp, 0.0, out=out)
            if self.invalidate and torch.cuda.is_current_stream_capturing():
                # an unsafe call on the capturing stream: the capture is invalidated and
                # cudaStreamEndCapture fails (trtexec's case, and the one that wedged PyTorch)
                assert isinstance(self.runtime, CudaRuntime)
                self.runtime.lib.cudaStreamQuery(ctypes.c_void_p(lane.stream.cuda_stream))
                self.captures_invalidated += 1


def reference(engine: TorchEngine, x: torch.Tensor) -> torch.Tensor:
    """The same kernels on the default stream."""
    return torch.clamp_min(x * engine.w + engine.b, 0.0)


def batch(rows: int) -> torch.Tensor:
    return torch.randn(rows, CHANNELS, device="cuda")


def test_graphs_replay_the_engine_and_results_survive_the_next_run() -> None:
    engine = TorchEngine(lanes=1)
    first, second = batch(4), batch(4)
    got_first = engine.run({"x": first})["out"]
    got_second = engine.run({"x": second})["out"]  # the same slot's graph, new inputs
    torch.cuda.synchronize()
    assert engine.cuda_graphs and len(engine.pool.lanes[0].slots) == 1
    assert torch.equal(got_first, reference(engine, first))  # copied out before the replay
    assert torch.equal(got_second, reference(engine, second))


def test_eager_float32_outputs_are_not_copied() -> None:
    engine = TorchEngine(lanes=1, cuda_graphs=False)
    x = batch(3)
    out = engine.run({"x": x})["out"]
    (slot,) = engine.pool.lanes[0].slots.values()
    assert out.data_ptr() == slot.context.out.data_ptr()
    assert torch.equal(out, reference(engine, x))


def test_two_threads_with_eviction_match_the_reference() -> None:
    engine = TorchEngine(lanes=2, shapes_per_lane=2)
    inputs = [batch(1 + i % 3) for i in range(48)]  # three shapes on lanes of two: evictions
    with ThreadPoolExecutor(2) as workers:
        results = list(workers.map(lambda x: engine.run({"x": x})["out"], inputs))
    torch.cuda.synchronize()
    assert engine.cuda_graphs, engine.pool.graph_failure
    assert len(engine.pool.lanes) <= 2
    assert all(len(lane.slots) <= 2 for lane in engine.pool.lanes)
    for x, got in zip(inputs, results, strict=True):
        assert torch.equal(got, reference(engine, x))


def test_invalidated_capture_runs_eagerly_with_flat_memory() -> None:
    engine = TorchEngine(lanes=1, invalidate=True)
    x = batch(8)
    with pytest.warns(RuntimeWarning, match="without graphs"):
        first = engine.run({"x": x})["out"]
    assert engine.captures_invalidated == 1 and not engine.cuda_graphs
    assert "CaptureInvalidated" in str(engine.pool.graph_failure)
    assert torch.equal(first, reference(engine, x))
    torch.cuda.synchronize()
    allocated = []
    for _ in range(100):
        got = engine.run({"x": x})["out"]
        del got
        torch.cuda.synchronize()
        allocated.append(torch.cuda.memory_allocated())
    assert allocated[-1] == allocated[9], allocated[::10]  # flat: nothing deferred for ever
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        y = torch.randn(1000, 1000, device="cuda")
        z = y @ y  # the allocator and other streams work normally after the failed capture
    side.synchronize()
    assert torch.isfinite(z).all()
    assert engine.captures_invalidated == 1  # no capture tried again


def test_a_dropped_backend_tears_its_lanes_down() -> None:
    torch.cuda.synchronize()
    baseline = torch.cuda.memory_allocated()
    engine = TorchEngine(lanes=2)
    x = batch(5)
    kept = engine.run({"x": x})["out"]
    lanes = engine.pool.all_lanes
    assert lanes and all(lane.stream is not None for lane in lanes)
    del engine
    gc.collect()
    assert all(lane.stream is None and lane.memory is None and not lane.slots for lane in lanes)
    torch.cuda.synchronize()
    assert torch.isfinite(kept).all()  # results belong to the caller's stream, not the lane
    del kept, x
    assert torch.cuda.memory_allocated() == baseline
    fresh = torch.cuda.Stream()  # handles may be reused now: nothing of ours refers to them
    with torch.cuda.stream(fresh):
        again = TorchEngine(lanes=1).run({"x": batch(2)})["out"]
    fresh.synchronize()
    assert again.shape == (2, CHANNELS)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_the_device_is_pinned_at_construction() -> None:
    with torch.cuda.device(1):
        engine = TorchEngine("cuda", lanes=1)
    assert engine.device == torch.device("cuda", 1)
    x = torch.randn(2, CHANNELS, device="cuda:1")

    def worker() -> torch.Tensor:
        torch.cuda.set_device(0)
        return engine.run({"x": x})["out"]

    with ThreadPoolExecutor(1) as pool:
        got = pool.submit(worker).result()
    assert got.device == torch.device("cuda", 1) and torch.equal(got, reference(engine, x))
