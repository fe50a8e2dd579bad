"""The TensorRT backend (TensorRT 10 and 11 Python API) for `.plan` / `.engine` artifacts.

Before deserialising, the manifest's TensorRT version and target GPU compute capabilities are
checked against this machine, because a mismatched engine either fails with an obscure message or
is refused deep inside TensorRT. At run time, inputs and outputs are torch CUDA tensors bound by
name with `set_tensor_address` (no host copies); `execute_async_v3` runs on the extractor's own
CUDA stream; the optimisation profile is picked from the input shapes; each fixed set of shapes is
captured once as a CUDA graph and replayed after; every thread gets its own execution context.

`tensorrt` and CUDA are imported lazily: this module imports (and type-checks against
tensorrt-stubs) on machines without either.
"""

from __future__ import annotations

import importlib.util
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import CleanDiftError
from ..manifest import Manifest

if TYPE_CHECKING:
    import tensorrt as trt

Shape = tuple[int, ...]
ProfileShapes = dict[str, tuple[Shape, Shape, Shape]]
"""One optimisation profile: input name -> (min, opt, max) shape."""

_DTYPES = {
    "FLOAT": torch.float32,
    "HALF": torch.float16,
    "BF16": torch.bfloat16,
    "INT8": torch.int8,
    "UINT8": torch.uint8,
    "INT32": torch.int32,
    "INT64": torch.int64,
    "BOOL": torch.bool,
}


def tensorrt_installed() -> bool:
    """Whether the real TensorRT is importable: tensorrt-stubs alone leaves a bare `tensorrt`
    namespace folder (type stubs, no code), which must not count."""
    spec = importlib.util.find_spec("tensorrt")
    return spec is not None and spec.origin is not None


def require_tensorrt() -> None:
    """A one-line error saying how to get TensorRT when it is not installed."""
    if not tensorrt_installed():
        raise CleanDiftError(
            "TensorRT is not installed: install it with the [gpu] extra on a machine with an "
            "NVIDIA GPU, or run the .onnx artifact with ONNX Runtime"
        )


def release(version: str) -> tuple[int, ...]:
    """The major.minor.patch numbers of a version string ("10.13.0.35" -> (10, 13, 0))."""
    numbers = [int(part) for part in re.findall(r"\d+", version)[:3]]
    return tuple(numbers)


def check_tensorrt_version(manifest: Manifest, installed: str) -> None:
    """Engines only load in the TensorRT release that built them: refuse any other, and refuse
    TensorRT-RTX engines (the CPU-side compile check), which this backend does not run."""
    runtime = manifest.target.get("runtime", "tensorrt")
    if runtime != "tensorrt":
        raise CleanDiftError(
            f"the engine was built for {runtime}, not TensorRT: build it on the GPU host with "
            "--target tensorrt, or run the .onnx artifact"
        )
    built = manifest.versions.get("tensorrt")
    if built is None:
        raise CleanDiftError(
            "the engine's manifest does not say which TensorRT built it: rebuild the engine"
        )
    if release(built) != release(installed):
        raise CleanDiftError(
            f"the engine was built with TensorRT {built}, this machine has {installed}: "
            "rebuild the engine here, or install the matching TensorRT"
        )


def target_capabilities(manifest: Manifest) -> list[tuple[int, int]]:
    """The compute capabilities named in `target["compute_capabilities"]` ("8.0", "SM90", ...);
    entries that name no capability (e.g. "portable default") are left out."""
    found = []
    for value in manifest.target.get("compute_capabilities", []):
        dotted = re.fullmatch(r"(\d+)\.(\d+)", str(value).strip())
        compact = re.fullmatch(r"(?i)sm_?(\d)(\d+)", str(value).strip())
        match = dotted or compact
        if match:
            found.append((int(match.group(1)), int(match.group(2))))
    return found


def check_compute_capability(manifest: Manifest, device: tuple[int, int]) -> None:
    """Refuse an engine built for other GPUs (an A100 engine on an H100, say). A manifest that
    names no capability cannot be checked here; TensorRT itself then refuses a wrong GPU."""
    targets = target_capabilities(manifest)
    if targets and device not in targets:
        wanted = ", ".join(f"{a}.{b}" for a, b in targets)
        raise CleanDiftError(
            f"the engine was built for compute capability {wanted}, this GPU is "
            f"{device[0]}.{device[1]}: rebuild the engine on this GPU"
        )


def select_profile(profiles: Sequence[ProfileShapes], shapes: Mapping[str, Shape]) -> int:
    """The first optimisation profile whose [min, max] ranges hold every input shape."""
    for index, profile in enumerate(profiles):
        if all(_within(shapes[name], low, high) for name, (low, _, high) in profile.items()):
            return index
    ranges = "; ".join(
        ", ".join(f"{name} {low}..{high}" for name, (low, _, high) in profile.items())
        for profile in profiles
    )
    raise CleanDiftError(
        f"no optimisation profile of the engine takes {dict(shapes)} (profiles: {ranges}): "
        "change the batch or image size, or rebuild the engine with a wider range"
    )


def _within(shape: Shape, low: Shape, high: Shape) -> bool:
    return len(shape) == len(low) and all(
        lo <= s <= hi for s, lo, hi in zip(shape, low, high, strict=True)
    )


def _shape(dims: trt.Dims) -> Shape:
    return tuple(int(dims[i]) for i in range(len(dims)))


@dataclass
class _CapturedGraph:
    """A CUDA graph of one execution at fixed shapes, with the buffers it reads and writes."""

    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]


@dataclass
class _ThreadState:
    """What one thread owns: an execution context, a CUDA stream and its captured graphs."""

    context: trt.IExecutionContext
    stream: torch.cuda.Stream
    profile: int = -1
    graphs: dict[tuple[tuple[str, Shape], ...], _CapturedGraph] = field(default_factory=dict)


class TensorRTBackend:
    """Runs a serialised TensorRT engine on one CUDA GPU."""

    def __init__(
        self, path: Path, manifest: Manifest, device: str = "cuda", cuda_graphs: bool = True
    ) -> None:
        require_tensorrt()
        import tensorrt as trt

        if not torch.cuda.is_available():
            raise CleanDiftError("TensorRT engines need an NVIDIA GPU; torch sees none here")
        self.device = torch.device(device)
        check_tensorrt_version(manifest, trt.__version__)
        check_compute_capability(manifest, torch.cuda.get_device_capability(self.device))
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        with torch.cuda.device(self.device):
            engine = self.runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if engine is None:
            raise CleanDiftError(f"TensorRT could not deserialise {path}: rebuild the engine")
        self.engine = engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        missing = [t for t in manifest.tap_names if t not in self.output_names]
        if missing:
            raise CleanDiftError(
                f"{path} lacks the outputs {', '.join(missing)} its manifest lists: rebuild it"
            )
        self.profiles = [self._profile(p) for p in range(engine.num_optimization_profiles)]
        self.cuda_graphs = cuda_graphs
        self.name = "tensorrt"
        self._local = threading.local()
        self._lock = threading.Lock()

    def _profile(self, index: int) -> ProfileShapes:
        profile: ProfileShapes = {}
        for name in self.input_names:
            low, opt, high = self.engine.get_tensor_profile_shape(name, index)
            profile[name] = (_shape(low), _shape(opt), _shape(high))
        return profile

    def _dtype(self, name: str) -> torch.dtype:
        kind = self.engine.get_tensor_dtype(name).name
        if kind not in _DTYPES:
            raise CleanDiftError(f"engine tensor {name} has unsupported type {kind}")
        return _DTYPES[kind]

    def _state(self) -> _ThreadState:
        state: _ThreadState | None = getattr(self._local, "state", None)
        if state is None:
            with self._lock, torch.cuda.device(self.device):
                context = self.engine.create_execution_context()
                if context is None:
                    raise CleanDiftError("TensorRT could not create an execution context")
                state = _ThreadState(context, torch.cuda.Stream(self.device))
            self._local.state = state
        return state

    def _bind(
        self, state: _ThreadState, inputs: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Select the profile, set shapes and addresses; allocate and bind the outputs."""
        shapes = {name: tuple(inputs[name].shape) for name in self.input_names}
        profile = select_profile(self.profiles, shapes)
        context = state.context
        if profile != state.profile:
            context.set_optimization_profile_async(profile, state.stream.cuda_stream)
            state.profile = profile
        for name in self.input_names:
            context.set_input_shape(name, shapes[name])
            context.set_tensor_address(name, inputs[name].data_ptr())
        outputs = {}
        for name in self.output_names:
            shape = _shape(context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=self._dtype(name), device=self.device)
            context.set_tensor_address(name, outputs[name].data_ptr())
        return outputs

    def _execute(self, state: _ThreadState) -> None:
        if not state.context.execute_async_v3(state.stream.cuda_stream):
            raise CleanDiftError("TensorRT execution failed (see the TensorRT log above)")

    def _capture(self, state: _ThreadState, inputs: Mapping[str, torch.Tensor]) -> _CapturedGraph:
        """Run once at these shapes (TensorRT finishes its set-up), then capture a replay."""
        static = {name: tensor.clone() for name, tensor in inputs.items()}
        outputs = self._bind(state, static)
        self._execute(state)
        state.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=state.stream, capture_error_mode="thread_local"):
            self._execute(state)
        return _CapturedGraph(graph, static, outputs)

    def _prepare(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            name: inputs[name].to(self.device, self._dtype(name), non_blocking=True).contiguous()
            for name in self.input_names
        }

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Taps for one batch: CUDA tensors in and out, float32, ordered after the caller's
        current stream and before its later work."""
        state = self._state()
        caller = torch.cuda.current_stream(self.device)
        state.stream.wait_stream(caller)
        with torch.cuda.stream(state.stream):
            tensors = self._prepare(inputs)
            if self.cuda_graphs:
                key = tuple(sorted((name, tuple(t.shape)) for name, t in tensors.items()))
                if key not in state.graphs:
                    state.graphs[key] = self._capture(state, tensors)
                captured = state.graphs[key]
                for name, tensor in tensors.items():
                    captured.inputs[name].copy_(tensor)
                captured.graph.replay()
                result = {n: o.to(torch.float32, copy=True) for n, o in captured.outputs.items()}
            else:
                outputs = self._bind(state, tensors)
                self._execute(state)
                result = {name: out.float() for name, out in outputs.items()}
        caller.wait_stream(state.stream)
        for tensor in result.values():
            tensor.record_stream(caller)
        return result
