"""Dedicated CUDA streams and CUDA-graph capture through the CUDA runtime itself (ctypes on the
``libcudart`` PyTorch loaded), as trtexec captures TensorRT: no PyTorch private memory pool.

Why not ``torch.cuda.CUDAGraph``: its ``capture_begin`` registers the capture with PyTorch's
caching allocator (``beginAllocateToPool``), and ``capture_end`` runs
``AT_CUDA_CHECK(cudaStreamEndCapture(...))`` BEFORE ``endAllocateToPool``
(aten/src/ATen/cuda/CUDAGraph.cpp). When a capture is invalidated, ``cudaStreamEndCapture``
fails, the check throws, and the allocator keeps the capture "underway" for good; its ``free``
then defers every block that carries ``record_stream`` uses "until no capture is underway"
(c10/cuda/CUDACachingAllocator.cpp, ``needs_events_deferred_until_no_capture``), which never
comes: memory grows on every later eager call. A warmed-up TensorRT ``execute_async_v3`` on
user-managed memory allocates nothing while captured, so no pool is needed, and an invalidated
capture here is an expected outcome (``CaptureInvalidated``), after which the runtime's last
error is cleared and nothing else in the process has changed.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from ..errors import CleanDiftError

CAPTURE_THREAD_LOCAL = 1
"""``cudaStreamCaptureModeThreadLocal``: only this thread's unsafe calls invalidate the capture
(other threads keep allocating and synchronising), as in trtexec."""
STREAM_NON_BLOCKING = 1
"""``cudaStreamNonBlocking``: no implicit ordering with the legacy default stream."""


class CaptureInvalidated(CleanDiftError):
    """A stream capture did not produce a graph (an expected outcome: run eagerly instead)."""


class Runtime(Protocol):
    """The CUDA runtime calls used here (``CudaRuntime``, or a fake in tests); each returns the
    CUDA error code (0 = success) and, where there is one, a handle."""

    def stream_create(self) -> tuple[int, int]: ...

    def stream_destroy(self, stream: int) -> int: ...

    def begin_capture(self, stream: int) -> int: ...

    def end_capture(self, stream: int) -> tuple[int, int]: ...

    def instantiate(self, graph: int) -> tuple[int, int]: ...

    def graph_destroy(self, graph: int) -> int: ...

    def launch(self, graph_exec: int, stream: int) -> int: ...

    def exec_destroy(self, graph_exec: int) -> int: ...

    def get_last_error(self) -> int: ...


class CudaRuntime:
    """The CUDA runtime library PyTorch loaded, called through ctypes (no other CUDA package)."""

    def __init__(self, library: Any) -> None:
        self.lib = library

    @classmethod
    def load(cls) -> CudaRuntime | None:
        """The ``libcudart`` this process mapped (torch's), or None where none is found."""
        try:
            maps = Path("/proc/self/maps").read_text()
        except OSError:
            return None
        paths = sorted({line.split()[-1] for line in maps.splitlines() if "libcudart.so" in line})
        return cls(ctypes.CDLL(paths[0])) if paths else None

    def stream_create(self) -> tuple[int, int]:
        handle = ctypes.c_void_p()
        code = self.lib.cudaStreamCreateWithFlags(
            ctypes.byref(handle), ctypes.c_uint(STREAM_NON_BLOCKING)
        )
        return int(code), int(handle.value or 0)

    def stream_destroy(self, stream: int) -> int:
        return int(self.lib.cudaStreamDestroy(ctypes.c_void_p(stream)))

    def begin_capture(self, stream: int) -> int:
        mode = ctypes.c_int(CAPTURE_THREAD_LOCAL)
        return int(self.lib.cudaStreamBeginCapture(ctypes.c_void_p(stream), mode))

    def end_capture(self, stream: int) -> tuple[int, int]:
        graph = ctypes.c_void_p()
        code = self.lib.cudaStreamEndCapture(ctypes.c_void_p(stream), ctypes.byref(graph))
        return int(code), int(graph.value or 0)

    def instantiate(self, graph: int) -> tuple[int, int]:
        graph_exec = ctypes.c_void_p()
        code = self.lib.cudaGraphInstantiateWithFlags(
            ctypes.byref(graph_exec), ctypes.c_void_p(graph), ctypes.c_ulonglong(0)
        )
        return int(code), int(graph_exec.value or 0)

    def graph_destroy(self, graph: int) -> int:
        return int(self.lib.cudaGraphDestroy(ctypes.c_void_p(graph)))

    def launch(self, graph_exec: int, stream: int) -> int:
        return int(self.lib.cudaGraphLaunch(ctypes.c_void_p(graph_exec), ctypes.c_void_p(stream)))

    def exec_destroy(self, graph_exec: int) -> int:
        return int(self.lib.cudaGraphExecDestroy(ctypes.c_void_p(graph_exec)))

    def get_last_error(self) -> int:
        return int(self.lib.cudaGetLastError())


def checked(code: int, what: str) -> None:
    """A CUDA error code as a one-line error."""
    if code != 0:
        raise CleanDiftError(f"CUDA could not {what} (CUDA error {code})")


class RuntimeGraph:
    """An instantiated CUDA graph bound to the stream it was captured on."""

    def __init__(self, runtime: Runtime, graph_exec: int, stream: int) -> None:
        self.runtime = runtime
        self.graph_exec = graph_exec
        self.stream = stream

    def replay(self) -> None:
        """Launch the graph on its stream."""
        if not self.graph_exec:
            raise CleanDiftError("replay of a closed CUDA graph")
        checked(self.runtime.launch(self.graph_exec, self.stream), "launch a CUDA graph")

    def close(self) -> None:
        """Destroy the executable graph (once; its stream must be idle)."""
        graph_exec, self.graph_exec = self.graph_exec, 0
        if graph_exec:
            self.runtime.exec_destroy(graph_exec)


def capture(runtime: Runtime, stream: int, enqueue: Callable[[], None]) -> RuntimeGraph:
    """Capture what `enqueue` puts on `stream` into an instantiated graph.

    ``cudaStreamEndCapture`` always runs once the capture began, whatever `enqueue` did; a
    capture that yields no graph (invalidated by an unsafe call, or `enqueue` failing) destroys
    what there is, clears the runtime's last error (so no later, unrelated launch check reports
    it) and raises ``CaptureInvalidated``.
    """
    code = runtime.begin_capture(stream)
    if code != 0:
        runtime.get_last_error()
        raise CaptureInvalidated(f"cudaStreamBeginCapture failed (CUDA error {code})")
    failure: Exception | None = None
    try:
        enqueue()
    except (CleanDiftError, RuntimeError) as exc:
        failure = exc
    finally:
        code, graph = runtime.end_capture(stream)
    graph_exec = 0
    if failure is None and code == 0 and graph:
        code, graph_exec = runtime.instantiate(graph)
    if graph:
        runtime.graph_destroy(graph)  # the executable graph keeps what it needs
    if failure is not None or code != 0 or not graph_exec:
        runtime.get_last_error()
        reason = f"{type(failure).__name__}: {failure}" if failure else f"CUDA error {code}"
        raise CaptureInvalidated(f"stream capture gave no graph ({reason})") from failure
    return RuntimeGraph(runtime, graph_exec, stream)


def pinned_device(device: str | torch.device) -> torch.device:
    """A CUDA device with its index fixed now: a bare "cuda" means the device current at
    construction, not whichever device a later worker thread happens to have current."""
    resolved = torch.device(device)
    if resolved.type != "cuda":
        raise CleanDiftError(f"TensorRT runs on a CUDA device, not {resolved}")
    index = resolved.index if resolved.index is not None else torch.cuda.current_device()
    return torch.device("cuda", index)
