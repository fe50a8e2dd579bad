"""ONNX Runtime sessions for exported feature graphs, with settings chosen for speed.

The runtime's ONNX Runtime backend opens every graph through `create_session`, so the
provider choice, the CPU-only attention fusion and the session options live in one place. On the
CPU the standard graph is rewritten in memory (see `ort_attention`) before ONNX Runtime sees it;
the file on disk, which TensorRT also reads, is never changed.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort

from ..errors import CleanDiftError
from ..manifest import read_onnx_header
from .ort_attention import fuse_attention
from .threads import physical_cores

_PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
}
_EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"
ERROR_SEVERITY = 3
"""ONNX Runtime's log severity for errors (0 verbose, 1 info, 2 warning, 3 error, 4 fatal)."""


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Options for large, convolution-heavy graphs run one request at a time.

    Full graph optimisation (NCHWc convolution layouts, fused activations); one intra-op thread
    per physical core (hyper-threads only contend for the same FMA units); a memory pattern, so
    each run's activations are planned into one block by lifetime instead of being allocated op
    by op (page-faulting fresh buffers for every layer costs up to a third of a run); no arena,
    so the block goes back to the system between runs and does not fragment. Only errors are
    logged: the optimiser's notes (e.g. "Removing initializer ..." for every folded weight) would
    bury the tool's own output.
    """
    if threads is not None and threads < 1:
        raise CleanDiftError(f"threads must be at least 1, got {threads}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads if threads is not None else physical_cores()
    options.inter_op_num_threads = 1
    options.enable_cpu_mem_arena = False
    options.enable_mem_pattern = True
    options.log_severity_level = ERROR_SEVERITY
    return options


def _cpu_graph(path: Path) -> tuple[bytes, int]:
    """The graph at `path` with attention fused for the CPU, serialised, and the fused count.

    Weights stay in their external file: only the graph structure is loaded and rewritten.
    """
    model = read_onnx_header(path)
    fused = fuse_attention(model)
    return model.SerializeToString(), fused


def create_session(
    path: Path,
    device: str = "cpu",
    threads: int | None = None,
    *,
    fuse: bool = True,
) -> ort.InferenceSession:
    """Open the ONNX graph at `path` on `device` ("cpu" or "cuda") and check the provider took.

    On the CPU, `fuse=True` replaces decomposed attention with ONNX Runtime's fused
    MultiHeadAttention (flash attention, no score matrix) before the session is built.
    """
    path = Path(path)
    if device not in _PROVIDERS:
        raise CleanDiftError(f"unknown device {device!r}: use one of {sorted(_PROVIDERS)}")
    if not path.is_file():
        raise CleanDiftError(f"{path} does not exist: export the model first")
    options = session_options(threads)
    model: str | bytes = str(path)
    if device == "cpu" and fuse:
        model, _ = _cpu_graph(path)
        options.add_session_config_entry(_EXTERNAL_DATA_FOLDER, str(path.resolve().parent))
    try:
        session = ort.InferenceSession(model, sess_options=options, providers=_PROVIDERS[device])
    except Exception as error:  # ORT raises several unrelated types for unreadable graphs
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CleanDiftError(f"ONNX Runtime cannot load {path}: {message}") from None
    wanted = _PROVIDERS[device][0]
    if wanted not in session.get_providers():
        raise CleanDiftError(
            f"{wanted} is not available in this onnxruntime: install onnxruntime-gpu for cuda"
        )
    return session
