"""The CUDA half of the TensorRT backend, with no TensorRT in it: lanes (a dedicated stream and
a scratch buffer each), stream ordering, graph capture through the CUDA runtime, ordered
teardown, and the ``run`` that ties them to ``trt_contexts.ContextPool``. An engine subclasses
it with ``new_context``, ``bind``, ``execute`` and ``output_dtypes``; the GPU check drives it
with a torch stand-in for the engine (tests/test_cuda_lanes_gpu.py), so captures, eviction,
threads, an invalid capture and teardown run on a real GPU without TensorRT.

Stream and allocator rules (why each is safe):

* Every allocation happens on the caller's current stream (inputs prepared, outputs bound,
  scratch memory, graph buffers); the lane's stream only runs work, after ``join`` made it wait
  for the caller's stream. No block belongs to a lane stream and no ``record_stream`` names
  one, so destroying a lane stream can never leave the allocator an event to record on a dead
  (or reused) stream handle.
* The caller's stream waits for the lane before ``run`` returns; results are on it. Graph
  outputs (the slot's own buffers) are copied on the caller's stream, and the lane then waits
  for those copies before its next replay can overwrite them. Eager outputs are returned as
  they are when already float32 (no copy).
* Streams are created once per lane and destroyed only by ``close_lane``, after the stream is
  idle and its memory and contexts are gone: on ``close()`` or when the backend is collected.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Mapping
from contextlib import AbstractContextManager
from functools import partial
from typing import Any

import torch

from ..errors import CleanDiftError
from .cuda_graphs import CudaRuntime, Runtime, RuntimeGraph, capture, checked, pinned_device
from .trt_contexts import ContextPool, Lane, close_lanes, is_aligned


class CudaLanes:
    """Lanes and runs for an engine on one pinned CUDA device (see the module doc)."""

    name = "cuda-lanes"

    def __init__(
        self,
        device: str | torch.device,
        *,
        cuda_graphs: bool = True,
        lanes: int = 2,
        shapes_per_lane: int = 4,
        runtime: Runtime | None = None,
    ) -> None:
        if not torch.cuda.is_available():
            raise CleanDiftError("this backend needs an NVIDIA GPU; torch sees none here")
        torch.cuda.init()  # maps libcudart, which CudaRuntime.load finds
        self.device = pinned_device(device)
        self.runtime = runtime if runtime is not None else CudaRuntime.load()
        if self.runtime is None and cuda_graphs:
            warnings.warn(
                "libcudart not found: running without CUDA graphs", RuntimeWarning, stacklevel=2
            )
            cuda_graphs = False
        self.pool = ContextPool(
            self, lanes=lanes, shapes_per_lane=shapes_per_lane, cuda_graphs=cuda_graphs
        )
        self._finalizer = weakref.finalize(self, close_lanes, self.pool.all_lanes)

    @property
    def cuda_graphs(self) -> bool:
        """Whether runs replay CUDA graphs (False when asked, or after a capture failed)."""
        return self.pool.cuda_graphs

    # --- what an engine provides -------------------------------------------------------
    def scratch_bytes(self) -> int:
        """Bytes of scratch memory one lane's contexts share."""
        raise NotImplementedError

    def input_dtype(self, name: str) -> torch.dtype:
        """The dtype the engine takes for an input."""
        raise NotImplementedError

    def new_context(self, lane: Lane) -> Any:
        """An execution context on the lane's scratch buffer."""
        raise NotImplementedError

    def bind(
        self, context: Any, lane: Lane, inputs: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Set shapes and addresses; allocate, bind and return the outputs."""
        raise NotImplementedError

    def execute(self, context: Any, lane: Lane) -> None:
        """Enqueue one execution on the lane's stream."""
        raise NotImplementedError

    # --- EngineOps ----------------------------------------------------------------------
    def new_lane(self, index: int) -> Lane:
        """A stream of our own (cudaStreamCreateWithFlags, non-blocking; a pooled torch stream
        only without the runtime library) and the lane's scratch buffer, allocated on the
        caller's stream and freed only after the lane's stream is idle."""
        release = None
        with torch.cuda.device(self.device):
            if self.runtime is not None:
                code, handle = self.runtime.stream_create()
                checked(code, "create a stream")
                stream: Any = torch.cuda.ExternalStream(handle, device=self.device)
                release = partial(self.runtime.stream_destroy, handle)
            else:
                stream = torch.cuda.Stream(self.device)
            size = max(self.scratch_bytes(), 1)
            memory = torch.empty(size, dtype=torch.uint8, device=self.device)
        return Lane(index, stream, memory, release=release)

    def join(self, lane: Lane) -> None:
        """The lane's stream waits for the caller's current stream."""
        lane.stream.wait_stream(torch.cuda.current_stream(self.device))

    def launching(self, lane: Lane) -> AbstractContextManager[object]:
        """The lane's stream as the current stream, for copies into graph inputs."""
        return torch.cuda.stream(lane.stream)

    def synchronize(self, lane: Lane) -> None:
        """Wait until the lane's queued work is done."""
        lane.stream.synchronize()

    def capture(self, context: Any, lane: Lane) -> RuntimeGraph:
        """One execution captured on the lane's stream through the CUDA runtime."""
        if self.runtime is None:
            raise CleanDiftError("no CUDA runtime library to capture with")
        with torch.cuda.device(self.device):
            enqueue = partial(self.execute, context, lane)
            return capture(self.runtime, lane.stream.cuda_stream, enqueue)

    # --- running ------------------------------------------------------------------------
    def close(self) -> None:
        """Tear the lanes down now (also done when the backend is garbage-collected)."""
        self.pool.close()

    def _prepare(
        self, inputs: Mapping[str, torch.Tensor], caller: torch.cuda.Stream
    ) -> dict[str, torch.Tensor]:
        """Inputs on the device, in the engine's dtypes, contiguous and 256-byte aligned,
        made on the caller's stream."""
        prepared = {}
        for name, source in inputs.items():
            tensor = source.to(self.device, self.input_dtype(name), non_blocking=True)
            tensor = tensor.contiguous()
            if not is_aligned(tensor.data_ptr()):
                tensor = tensor.clone()
            if tensor.data_ptr() == source.data_ptr() and source.is_cuda:
                source.record_stream(caller)  # its reuse waits for the caller, who waits for us
            prepared[name] = tensor
        return prepared

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Outputs for one batch: CUDA tensors in and out, float32, ordered after the caller's
        current stream and before its later work."""
        with torch.cuda.device(self.device):
            caller = torch.cuda.current_stream(self.device)
            prepared = self._prepare(inputs, caller)
            with self.pool.lane() as lane:
                outputs, owned_by_slot = self.pool.execute(lane, prepared)
                caller.wait_stream(lane.stream)
                results = {
                    name: out.to(torch.float32, copy=owned_by_slot) for name, out in outputs.items()
                }
                if owned_by_slot:
                    lane.stream.wait_stream(caller)  # the next replay waits for these copies
        return results
