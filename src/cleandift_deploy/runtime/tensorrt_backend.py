"""The TensorRT backend (TensorRT 10 and 11 Python API) for `.plan` / `.engine` artifacts.

Before deserialising, the manifest's TensorRT version and target GPU compute capabilities are
checked against this machine, because a mismatched engine either fails with an obscure message or
is refused deep inside TensorRT. At run time, inputs and outputs are torch CUDA tensors bound by
name with `set_tensor_address` (no host copies; addresses 256-byte aligned, every boolean TensorRT
returns is checked); `execute_async_v3` runs on a dedicated CUDA stream per lane; the optimisation
profile is picked from the input shapes. Execution contexts, their shared user-managed device
memory (``device_memory_size_v2`` and the two-argument ``set_device_memory``: TensorRT 10.1 and
later), CUDA graph capture with its fallback to eager runs, and the locking between threads are
`trt_contexts.ContextPool`'s job: one context per (lane, shapes), a bounded number of lanes.
Streams, stream ordering, capture through the CUDA runtime and the ordered teardown are
`cuda_lanes.CudaLanes`' (this class is its TensorRT half). The device index is fixed when the
backend is made.

`tensorrt` and CUDA are imported lazily: this module imports (and type-checks against
tensorrt-stubs) on machines without either.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import CleanDiftError
from ..manifest import Manifest
from .cuda_lanes import CudaLanes
from .trt_contexts import Lane, check, is_aligned

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


def check_build_gpu(manifest: Manifest, device: tuple[int, int]) -> None:
    """An engine runs only on its build GPU's compute capability, unless it was built
    hardware-compatible (Ampere and newer): check whichever the manifest records."""
    level = str(manifest.target.get("hardware_compatibility", "none")).lower()
    if level == "ampere_plus":
        if device < (8, 0):
            raise CleanDiftError(
                f"the engine was built hardware-compatible for Ampere and newer GPUs, this GPU is "
                f"{device[0]}.{device[1]}: run the .onnx artifact on this GPU"
            )
        return
    check_compute_capability(manifest, device)


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


class TensorRTBackend(CudaLanes):
    """Runs a serialised TensorRT engine on one CUDA GPU; `run` is safe from several threads.

    `lanes` bounds how many runs go at once (each lane holds one scratch buffer of
    `engine.device_memory_size_v2` bytes and up to `shapes_per_lane` contexts with their graphs);
    `cuda_graphs=False` runs every call eagerly.
    """

    def __init__(
        self,
        path: Path,
        manifest: Manifest,
        device: str = "cuda",
        cuda_graphs: bool = True,
        lanes: int = 2,
        shapes_per_lane: int = 4,
    ) -> None:
        require_tensorrt()
        import tensorrt as trt

        super().__init__(
            device, cuda_graphs=cuda_graphs, lanes=lanes, shapes_per_lane=shapes_per_lane
        )
        check_tensorrt_version(manifest, trt.__version__)
        check_build_gpu(manifest, torch.cuda.get_device_capability(self.device))
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.trt_runtime = trt.Runtime(self.logger)
        with torch.cuda.device(self.device):
            engine = self.trt_runtime.deserialize_cuda_engine(Path(path).read_bytes())
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
        self.name = "tensorrt"

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

    def scratch_bytes(self) -> int:
        """``device_memory_size_v2``: the scratch all of a lane's contexts share."""
        return int(self.engine.device_memory_size_v2)

    def input_dtype(self, name: str) -> torch.dtype:
        """The engine's dtype for an input."""
        return self._dtype(name)

    def new_context(self, lane: Lane) -> trt.IExecutionContext:
        """A context on the lane's scratch buffer (created without memory of its own)."""
        import tensorrt as trt

        strategy = trt.ExecutionContextAllocationStrategy.USER_MANAGED
        with torch.cuda.device(self.device):
            context = self.engine.create_execution_context(strategy)
        if context is None:
            raise CleanDiftError("TensorRT could not create an execution context")
        context.set_device_memory(lane.memory.data_ptr(), int(self.engine.device_memory_size_v2))
        return context

    def bind(
        self, context: trt.IExecutionContext, lane: Lane, inputs: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """Select the profile, set shapes and addresses; allocate and bind the outputs."""
        shapes = {name: tuple(inputs[name].shape) for name in self.input_names}
        profile = select_profile(self.profiles, shapes)
        if context.active_optimization_profile != profile:
            selected = context.set_optimization_profile_async(profile, lane.stream.cuda_stream)
            check(selected, f"select optimisation profile {profile}")
        for name in self.input_names:
            check(context.set_input_shape(name, shapes[name]), f"set {name} to {shapes[name]}")
            _bind_address(context, name, inputs[name])
        outputs = {}
        for name in self.output_names:
            shape = _shape(context.get_tensor_shape(name))
            if any(size < 0 for size in shape):
                raise CleanDiftError(f"TensorRT could not infer the shape of {name} ({shape})")
            outputs[name] = torch.empty(shape, dtype=self._dtype(name), device=self.device)
            _bind_address(context, name, outputs[name])
        return outputs

    def execute(self, context: trt.IExecutionContext, lane: Lane) -> None:
        """Enqueue one execution on the lane's stream."""
        check(context.execute_async_v3(lane.stream.cuda_stream), "run the engine")

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Taps for one batch (the engine's inputs by name): see ``CudaLanes.run``."""
        return super().run({name: inputs[name] for name in self.input_names})


def _bind_address(context: trt.IExecutionContext, name: str, tensor: torch.Tensor) -> None:
    if not is_aligned(tensor.data_ptr()):
        raise CleanDiftError(f"{name} is not 256-byte aligned, which TensorRT requires")
    check(context.set_tensor_address(name, tensor.data_ptr()), f"bind {name}")
