"""ONNX Runtime sessions for exported feature graphs, with settings chosen for speed.

The runtime's ONNX Runtime backend opens every graph through `create_session`, so the
provider choice and the session options live in one place.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from ..errors import CleanDiftError

_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
}


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Session options: full graph optimisation, `threads` intra-op threads (None: ORT default)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        if threads < 1:
            raise CleanDiftError(f"threads must be at least 1, got {threads}")
        options.intra_op_num_threads = threads
    return options


def create_session(
    path: Path, device: str = "cpu", threads: int | None = None
) -> ort.InferenceSession:
    """Open the ONNX graph at `path` on `device` ("cpu" or "cuda") and check the provider took."""
    path = Path(path)
    if device not in _PROVIDERS:
        raise CleanDiftError(f"unknown device {device!r}: use one of {sorted(_PROVIDERS)}")
    if not path.is_file():
        raise CleanDiftError(f"{path} does not exist: export the model first")
    try:
        session = ort.InferenceSession(
            str(path), sess_options=session_options(threads), providers=_PROVIDERS[device]
        )
    except Exception as error:  # ORT raises several unrelated types for unreadable graphs
        raise CleanDiftError(f"ONNX Runtime cannot load {path}: {error}".splitlines()[0]) from None
    wanted = _PROVIDERS[device][0]
    if wanted not in session.get_providers():
        raise CleanDiftError(
            f"{wanted} is not available in this onnxruntime: install onnxruntime-gpu for cuda"
        )
    return session
