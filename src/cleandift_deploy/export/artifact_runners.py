"""Running an artifact on given inputs: ONNX graphs in ONNX Runtime, engines through Polygraphy's
TensorRT runner (a GPU machine)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import CleanDiftError
from ..manifest import Manifest

Batches = list[dict[str, np.ndarray]]


def run_onnx(path: Path, batches: Batches) -> list[dict[str, np.ndarray]]:
    """Outputs per batch from ONNX Runtime on the CPU."""
    from ..runtime.ort_session import create_session

    session = create_session(path)
    names = [o.name for o in session.get_outputs()]
    return [
        {
            n: np.asarray(v, dtype=np.float32)
            for n, v in zip(names, session.run(names, b), strict=True)
        }
        for b in batches
    ]


def run_openvino(path: Path, batches: Batches, precision: str) -> list[dict[str, np.ndarray]]:
    """Outputs per batch from OpenVINO on the CPU ("fp32" exact, or "bf16")."""
    from ..runtime.openvino_backend import OpenVINOModel

    model = OpenVINOModel(path, precision)
    return [
        {
            name: np.asarray(value, dtype=np.float32)
            for name, value in zip(
                model.output_names,
                model.run([np.ascontiguousarray(b[n]) for n in model.input_names]),
                strict=True,
            )
        }
        for b in batches
    ]


def run_engine(path: Path, manifest: Manifest, batches: Batches) -> list[dict[str, np.ndarray]]:
    """Outputs per batch from a TensorRT (or TensorRT-RTX) engine; needs a GPU."""
    if manifest.target.get("runtime") == "tensorrt-rtx":
        os.environ.setdefault("POLYGRAPHY_USE_TENSORRT_RTX", "1")
    try:
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner

        with TrtRunner(EngineFromBytes(path.read_bytes())) as runner:
            return [
                {
                    n: np.asarray(v, dtype=np.float32)
                    for n, v in runner.infer(b, copy_outputs_to_host=True).items()
                }
                for b in batches
            ]
    except CleanDiftError:
        raise
    except Exception as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CleanDiftError(
            f"cannot run the engine {path.name} here ({reason}): engines run on a GPU; "
            "make golden outputs here with --save-golden and compare there"
        ) from None


ONNX_RUNNERS = ("onnxruntime", "openvino", "openvino-bf16")
"""Runtimes `compare` can run an ONNX graph in."""


def run_artifact(
    path: Path, manifest: Manifest, batches: Batches, runtime: str = "onnxruntime"
) -> list[dict[str, np.ndarray]]:
    """Outputs per batch of the ONNX graph (in `runtime`) or engine at `path`."""
    if manifest.kind == "engine":
        return run_engine(path, manifest, batches)
    if runtime not in ONNX_RUNNERS:
        raise CleanDiftError(f"unknown runtime {runtime!r}: use one of {', '.join(ONNX_RUNNERS)}")
    if runtime.startswith("openvino"):
        return run_openvino(path, batches, "bf16" if runtime == "openvino-bf16" else "fp32")
    return run_onnx(path, batches)
