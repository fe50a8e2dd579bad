"""Which backend runs an artifact: the file kind, what is installed, and what this machine has.

`auto` picks the fastest backend that can run here without losing the artifact's agreement:
TensorRT for engines; for ONNX graphs ONNX Runtime, on CUDA when a GPU and onnxruntime-gpu are
both present. PyTorch under bf16 autocast ("torch-bf16") is faster than fp32 PyTorch on CPUs with
AMX (SD2.1 us6 graph: 1.9x at 512 px, 1.8-2.8x at 768 px) but is never chosen by `auto`: on
the full-size architecture its nearest-neighbour matches agree with fp32 on only 91-98% of query
points, below even the fp16 bar of 99%
(benchmarks/results/unknown-machine/runtime_backends.md). Ask for it by name where that trade is
acceptable.

OpenVINO ("openvino", exact fp32; "openvino-bf16") runs ONNX graphs on the CPU. `auto` keeps ONNX
Runtime for them: on AMD EPYC (AVX512_BF16, 2 cores, SD2.1 us6 graph) OpenVINO f32 was no faster at
768 px (21.1 s vs 21.2 s; an earlier single run: 18.5 vs 21.2) while it needs more memory and a
compile per new input size
(benchmarks/results/legacy-amd-epyc-avx512bf16-no-amx-2c/runtime_cpu.md). "openvino-bf16" is the
fastest CPU path (2.1x PyTorch eager at 768 px) but moves 6-9% of nearest-neighbour matches, like
"torch-bf16": by name only.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CleanDiftError

BACKENDS = ("auto", "onnxruntime", "openvino", "openvino-bf16", "tensorrt", "torch", "torch-bf16")
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
    import torch

    return (
        torch.cuda.is_available()
        and "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    )


def choose_backend(kind: str) -> str:
    """The backend `auto` means for this artifact kind."""
    return "tensorrt" if kind == "engine" else "onnxruntime"


def default_device(backend: str) -> str:
    """The device a backend runs on when none is named."""
    if backend == "tensorrt":
        return "cuda"
    if backend == "onnxruntime":
        return "cuda" if ort_has_cuda() else "cpu"
    if backend in ("torch-bf16", "openvino", "openvino-bf16"):
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
