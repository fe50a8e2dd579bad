"""Building TensorRT engines from exported graphs, one code path for TensorRT 10/11 and TensorRT
for RTX (which builds ahead of time without a GPU).

Networks are strongly typed: precision comes from the ONNX graph (TensorRT 11 and RTX have no
fp16 flag). Optimisation profiles come from the manifest's shape ranges. A TensorRT engine runs
only on its build GPU's compute capability unless built hardware-compatible (Ampere and newer):
the manifest records the build GPU's name and capability and the runtime checks them. The timing
cache is used by TensorRT only (TensorRT-RTX ignores timing caches); a cache TensorRT refuses
(one from another GPU or release) is replaced by a fresh one. The TensorRT module is imported
lazily, so this package imports without either installed.
"""

from __future__ import annotations

import importlib
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..atomic import atomic_path, refuse_existing
from ..errors import CleanDiftError
from ..manifest import Manifest, sidecar_path
from ..models.prompt import PROMPT_LENGTH
from ..models.taps import LATENT_STRIDE
from .artifact_files import read_manifest_metadata

if TYPE_CHECKING:
    import tensorrt as trt

TARGETS = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}
"""Build targets and the Python module that provides each."""
GIB = 1 << 30


@dataclass
class BuildOptions:
    """How to build: target runtime, GPUs (RTX only), optimisation level, workspace, cache."""

    target: str = "tensorrt-rtx"
    compute_capabilities: tuple[str, ...] = ()
    opt_level: int | None = None
    workspace_gb: float = 4.0
    timing_cache: Path | None = None
    force: bool = False
    hardware_compatible: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def default_target() -> str:
    """`tensorrt` where the full TensorRT imports (a GPU host: the engines Triton and the
    TensorRT runtime load), else `tensorrt-rtx` (installs anywhere; ahead-of-time builds)."""
    try:
        module = importlib.import_module("tensorrt")
    except ImportError:
        return "tensorrt-rtx"
    return "tensorrt" if hasattr(module, "Builder") else "tensorrt-rtx"


def import_tensorrt(target: str) -> ModuleType:
    """The TensorRT module for `target`, or a one-line error saying what to install."""
    if target not in TARGETS:
        raise CleanDiftError(f"unknown target {target!r}: use one of {', '.join(TARGETS)}")
    try:
        return importlib.import_module(TARGETS[target])
    except ImportError:
        package = "tensorrt-rtx-cu12" if target == "tensorrt-rtx" else "tensorrt (needs a GPU host)"
        raise CleanDiftError(f"{TARGETS[target]} is not installed: pip install {package}") from None


def profile_shapes(manifest: Manifest, name: str, static: tuple[int, ...]) -> list[tuple[int, ...]]:
    """min / opt / max shapes of one graph input from the manifest's ranges (image pixels)."""
    batch, height, width = manifest.batch, manifest.height, manifest.width
    shapes: list[tuple[int, ...]] = []
    for pick in ("min", "opt", "max"):
        b, h, w = (getattr(r, pick) for r in (batch, height, width))
        if name == manifest.input.name:
            scale = 1 if manifest.input.name == "image" else LATENT_STRIDE
            shapes.append((b, static[1], h // scale, w // scale))
        else:
            shapes.append((b, PROMPT_LENGTH, static[2]))
    return shapes


def parse_onnx(
    trt_module: Any, builder: trt.Builder, onnx_path: Path, logger: trt.ILogger
) -> tuple[Any, Any]:
    """A strongly typed network parsed from `onnx_path` (and its parser, which must outlive it)."""
    flag = 1 << int(trt_module.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flag)
    parser = trt_module.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise CleanDiftError(f"TensorRT cannot parse {onnx_path}: {_first_parser_error(parser)}")
    _make_attention_decomposable(trt_module, network)
    return network, parser


def _first_parser_error(parser: Any) -> str:
    """The first line of the parser's first error, or a pointer to the log when it recorded
    none (a parse can fail with an empty error list, e.g. on an unreadable external-data file)."""
    for index in range(parser.num_errors):
        lines = str(parser.get_error(index)).strip().splitlines()
        if lines:
            return lines[0]
    return "the parser recorded no error (see the TensorRT log above, or re-export the graph)"


def _make_attention_decomposable(trt_module: Any, network: Any) -> None:
    """Opset-23 Attention without a dedicated kernel (small heads, fp32) builds only when
    marked decomposable; TensorRT then runs it as separate matmul and softmax layers."""
    output_type = getattr(trt_module.LayerType, "ATTENTION_OUTPUT", None)
    if output_type is None:
        return
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type == output_type:
            layer.__class__ = trt_module.IAttentionOutputLayer
            layer.attention.decomposable = True


def _configure(
    trt_module: Any, builder: Any, network: Any, manifest: Manifest, options: BuildOptions
) -> Any:
    config = builder.create_builder_config()
    config.set_memory_pool_limit(
        trt_module.MemoryPoolType.WORKSPACE, int(options.workspace_gb * GIB)
    )
    if options.opt_level is not None:
        config.builder_optimization_level = options.opt_level
    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        low, opt, high = profile_shapes(manifest, tensor.name, tuple(tensor.shape))
        profile.set_shape(tensor.name, low, opt, high)
    config.add_optimization_profile(profile)
    if options.compute_capabilities:
        _set_compute_capabilities(trt_module, config, options)
    if options.hardware_compatible:
        if options.target != "tensorrt":
            raise CleanDiftError(
                "--hardware-compatible applies to --target tensorrt; TensorRT-RTX engines "
                "already target the GPUs named by --compute-capability"
            )
        level = trt_module.HardwareCompatibilityLevel.AMPERE_PLUS
        config.hardware_compatibility_level = level
    return config


def _set_compute_capabilities(trt_module: Any, config: Any, options: BuildOptions) -> None:
    if options.target != "tensorrt-rtx":
        raise CleanDiftError(
            "--compute-capability applies to --target tensorrt-rtx; TensorRT builds for the GPU "
            "it runs on"
        )
    config.num_compute_capabilities = len(options.compute_capabilities)
    for index, value in enumerate(options.compute_capabilities):
        name = "SM" + value.replace(".", "")
        member = getattr(trt_module.ComputeCapability, name, None)
        if member is None:
            known = [m for m in dir(trt_module.ComputeCapability) if m.startswith("SM")]
            raise CleanDiftError(
                f"TensorRT-RTX cannot target compute capability {value}: it supports "
                f"{', '.join(known)} (Hopper SM90 needs --target tensorrt)"
            )
        config.set_compute_capability(member, index)


def load_timing_cache(config: Any, path: Path | None, target: str) -> Any:
    """The timing cache the build uses and later writes back, or None (no path, or RTX, whose
    timing-cache calls are deprecated no-ops). A cache TensorRT refuses, e.g. one written on
    another GPU, is replaced by a fresh one instead of being written back unchanged."""
    if path is None or target == "tensorrt-rtx":
        return None
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return cache
    if data:
        warnings.warn(
            f"TensorRT refused the timing cache {path} (another GPU or release?): "
            "building with a fresh one, which replaces it",
            RuntimeWarning,
            stacklevel=2,
        )
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise CleanDiftError("TensorRT refused even an empty timing cache: drop --timing-cache")
    return cache


def build_gpu(target: str) -> dict[str, Any]:
    """The GPU a TensorRT build runs on (its name and compute capability); empty for
    TensorRT-RTX, which builds ahead of time for the capabilities it is given."""
    if target != "tensorrt":
        return {}
    import torch

    if not torch.cuda.is_available():
        raise CleanDiftError(
            "--target tensorrt builds on the GPU the engine will run on; torch sees none here "
            "(use --target tensorrt-rtx to build without a GPU)"
        )
    major, minor = torch.cuda.get_device_capability()
    return {"name": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}"}


def engine_target(options: BuildOptions, gpu: dict[str, Any]) -> dict[str, Any]:
    """The manifest's target: which runtime, and which GPUs the engine runs on."""
    if options.target != "tensorrt":
        capabilities = list(options.compute_capabilities) or ["portable default"]
        return {"runtime": options.target, "compute_capabilities": capabilities}
    if options.hardware_compatible:
        capabilities, level = ["8.0+ (hardware compatible)"], "ampere_plus"
    else:
        capabilities, level = [gpu["compute_capability"]], "none"
    return {
        "runtime": "tensorrt",
        "compute_capabilities": capabilities,
        "hardware_compatibility": level,
        "build_gpu": gpu,
    }


def _engine_manifest(
    manifest: Manifest,
    trt_module: ModuleType,
    options: BuildOptions,
    onnx_path: Path,
    seconds: float,
    gpu: dict[str, Any],
) -> Manifest:
    engine = Manifest(**{**manifest.__dict__})
    engine.kind = "engine"
    engine.versions = {**manifest.versions, TARGETS[options.target]: str(trt_module.__version__)}
    engine.target = engine_target(options, gpu)
    engine.build = {
        **manifest.build,
        "onnx": onnx_path.name,
        "opt_level": options.opt_level,
        "workspace_gb": options.workspace_gb,
        "build_seconds": round(seconds, 2),
    }
    return engine


def build_engine(onnx_path: Path, out: Path, options: BuildOptions) -> Manifest:
    """Build and write the engine for `onnx_path` and its manifest; return the manifest."""
    onnx_path, out = Path(onnx_path), Path(out)
    sidecar = sidecar_path(out)
    refuse_existing(out, options.force)
    refuse_existing(sidecar, options.force)
    manifest = read_manifest_metadata(onnx_path)
    trt_module = import_tensorrt(options.target)
    gpu = build_gpu(options.target)
    logger = trt_module.Logger(trt_module.Logger.ERROR)
    builder = trt_module.Builder(logger)
    network, _parser = parse_onnx(trt_module, builder, onnx_path, logger)
    config = _configure(trt_module, builder, network, manifest, options)
    cache = load_timing_cache(config, options.timing_cache, options.target)
    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CleanDiftError(
            f"TensorRT could not build {onnx_path.name} (raise --workspace, or check the log above)"
        )
    seconds = time.perf_counter() - started
    with atomic_path(out) as temporary:
        temporary.write_bytes(bytes(serialized))
    if cache is not None and options.timing_cache is not None:
        with atomic_path(options.timing_cache) as temporary:
            temporary.write_bytes(bytes(cache.serialize()))
    engine_manifest = _engine_manifest(manifest, trt_module, options, onnx_path, seconds, gpu)
    engine_manifest.save(sidecar)
    return engine_manifest
