"""Capture through the CUDA runtime with a fake runtime (no GPU): the capture always ends once it
began, an invalidated capture is an expected outcome that clears the runtime's last error and
leaves nothing behind, graphs are destroyed once; the device index is pinned at construction."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from cleandift_deploy.errors import CleanDiftError
from cleandift_deploy.runtime import cuda_graphs
from cleandift_deploy.runtime.cuda_graphs import CaptureInvalidated, CudaRuntime, capture

INVALIDATED = 901  # cudaErrorStreamCaptureInvalidated


class FakeRuntime:
    """Records every call; `end_code`/`instantiate_code` make those steps fail."""

    def __init__(self, end_code: int = 0, instantiate_code: int = 0, begin_code: int = 0) -> None:
        self.calls: list[str] = []
        self.end_code, self.instantiate_code = end_code, instantiate_code
        self.begin_code = begin_code
        self.capturing = False

    def stream_create(self) -> tuple[int, int]:
        return 0, 0x51

    def stream_destroy(self, stream: int) -> int:
        self.calls.append("stream_destroy")
        return 0

    def begin_capture(self, stream: int) -> int:
        self.calls.append("begin")
        self.capturing = self.begin_code == 0
        return self.begin_code

    def end_capture(self, stream: int) -> tuple[int, int]:
        self.calls.append("end")
        self.capturing = False
        return self.end_code, (0 if self.end_code else 0x6A)

    def instantiate(self, graph: int) -> tuple[int, int]:
        self.calls.append("instantiate")
        return self.instantiate_code, (0 if self.instantiate_code else 0xE7)

    def graph_destroy(self, graph: int) -> int:
        self.calls.append("graph_destroy")
        return 0

    def launch(self, graph_exec: int, stream: int) -> int:
        self.calls.append(f"launch {graph_exec:#x} on {stream:#x}")
        return 0

    def exec_destroy(self, graph_exec: int) -> int:
        self.calls.append("exec_destroy")
        return 0

    def get_last_error(self) -> int:
        self.calls.append("clear_error")
        return 0


def test_a_capture_is_instantiated_replayed_and_destroyed_once() -> None:
    runtime = FakeRuntime()
    enqueued: list[bool] = []
    graph = capture(runtime, 0x51, lambda: enqueued.append(runtime.capturing))
    assert enqueued == [True]
    assert runtime.calls == ["begin", "end", "instantiate", "graph_destroy"]
    graph.replay()
    assert runtime.calls[-1] == "launch 0xe7 on 0x51"
    graph.close()
    graph.close()
    assert runtime.calls.count("exec_destroy") == 1
    with pytest.raises(CleanDiftError, match="closed CUDA graph"):
        graph.replay()


def test_an_invalidated_capture_is_ended_and_cleared() -> None:
    runtime = FakeRuntime(end_code=INVALIDATED)
    with pytest.raises(CaptureInvalidated, match="CUDA error 901"):
        capture(runtime, 0x51, lambda: None)
    assert runtime.calls == ["begin", "end", "clear_error"] and not runtime.capturing


def test_a_failing_enqueue_still_ends_the_capture() -> None:
    runtime = FakeRuntime()

    def refused() -> None:
        raise CleanDiftError("TensorRT refused to run the engine")

    with pytest.raises(CaptureInvalidated, match="refused to run the engine") as caught:
        capture(runtime, 0x51, refused)
    assert isinstance(caught.value.__cause__, CleanDiftError)
    assert runtime.calls == ["begin", "end", "graph_destroy", "clear_error"]
    interrupted = FakeRuntime()

    def interrupt() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        capture(interrupted, 0x51, interrupt)
    assert interrupted.calls == ["begin", "end"] and not interrupted.capturing


def test_failed_instantiation_and_begin() -> None:
    runtime = FakeRuntime(instantiate_code=1)
    with pytest.raises(CaptureInvalidated, match="CUDA error 1"):
        capture(runtime, 0x51, lambda: None)
    assert runtime.calls == ["begin", "end", "instantiate", "graph_destroy", "clear_error"]
    refused = FakeRuntime(begin_code=900)
    with pytest.raises(CaptureInvalidated, match="BeginCapture"):
        capture(refused, 0x51, lambda: pytest.fail("nothing may be enqueued"))
    assert refused.calls == ["begin", "clear_error"]


class FakeLibrary:
    """Stands for libcudart: each symbol records its name and returns success."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return lambda *args: self.names.append(name) or 0


def test_runtime_calls_the_cuda_runtime_symbols() -> None:
    library = FakeLibrary()
    runtime = CudaRuntime(library)
    runtime.stream_create()
    runtime.begin_capture(1)
    runtime.end_capture(1)
    runtime.instantiate(2)
    runtime.launch(3, 1)
    runtime.exec_destroy(3)
    runtime.graph_destroy(2)
    runtime.stream_destroy(1)
    runtime.get_last_error()
    assert library.names == [
        "cudaStreamCreateWithFlags",
        "cudaStreamBeginCapture",
        "cudaStreamEndCapture",
        "cudaGraphInstantiateWithFlags",
        "cudaGraphLaunch",
        "cudaGraphExecDestroy",
        "cudaGraphDestroy",
        "cudaStreamDestroy",
        "cudaGetLastError",
    ]


def test_the_device_index_is_pinned_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert cuda_graphs.pinned_device("cuda") == torch.device("cuda", 1)
    assert cuda_graphs.pinned_device("cuda:0") == torch.device("cuda", 0)
    assert cuda_graphs.pinned_device(torch.device("cuda", 2)).index == 2
    with pytest.raises(CleanDiftError, match="CUDA device"):
        cuda_graphs.pinned_device("cpu")


def test_lanes_pin_the_device_current_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    from cleandift_deploy.runtime.cuda_lanes import CudaLanes

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "init", lambda: None)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    lanes = CudaLanes("cuda", runtime=FakeRuntime())
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)  # a worker thread's device
    assert lanes.device == torch.device("cuda", 1) and lanes.cuda_graphs
