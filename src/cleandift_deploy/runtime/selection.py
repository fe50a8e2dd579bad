"""Which backend runs an artifact: the file kind, what is installed, and what this machine has.

`auto` picks the fastest backend that can run here without losing the artifact's precision:
TensorRT for engines; for ONNX graphs ONNX Runtime, on CUDA when a GPU and onnxruntime-gpu are
both present. The one exception is a reduced-precision (fp16) graph on a CPU with AMX bf16 units
whose checkpoint is on this machine: PyTorch under bf16 autocast runs it, because it is several
times faster there and agrees with fp32 PyTorch within the fp16 thresholds the exporter applies
(benchmarks/bench_runtime_backends.py measures both). An fp32 graph is never handed to bf16: its
bar (cosine 0.99999) is beyond bf16's 8-bit mantissa.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CleanDiftError
from ..manifest import Manifest

BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch", "torch-bf16")
ARTIFACT_KINDS = {".onnx": "onnx", ".plan": "engine", ".engine": "engine"}
"""File suffix -> the manifest `kind` the exporter and the engine builder write."""


def artifact_kind(path: Path) -> str:
    """The kind ("onnx" or "engine") a file name says; missing files and other names are refused."""
    if not path.is_file():
        raise CleanDiftError(f"{path} does not exist: export the model first")
    kind = ARTIFACT_KINDS.get(path.suffix)
    if kind is None:
        raise CleanDiftError(
            f"{path.name} is not a model artifact: give a .onnx, .plan or .engine file"
        )
    return kind


def ort_has_cuda() -> bool:
    """Whether ONNX Runtime and torch can both use a CUDA GPU here."""
    import onnxruntime

    return (
        torch.cuda.is_available()
        and "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    )


def has_amx_bf16() -> bool:
    """Whether this CPU has AMX bf16 tile units (Linux; elsewhere assumed not)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags.split()


def checkpoint_here(manifest: Manifest) -> bool:
    """Whether the weights an artifact came from can be rebuilt on this machine."""
    return manifest.source.startswith("random-init:") or Path(manifest.source).exists()


def choose_backend(kind: str, device: str | None, manifest: Manifest) -> str:
    """The backend `auto` means for this artifact on this machine."""
    if kind == "engine":
        return "tensorrt"
    on_cpu = device == "cpu" or (device is None and not ort_has_cuda())
    if manifest.precision != "fp32" and on_cpu and has_amx_bf16() and checkpoint_here(manifest):
        return "torch-bf16"
    return "onnxruntime"


def default_device(backend: str) -> str:
    """The device a backend runs on when none is named."""
    if backend == "tensorrt":
        return "cuda"
    if backend == "onnxruntime":
        return "cuda" if ort_has_cuda() else "cpu"
    if backend == "torch-bf16":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"
