"""Graph clean-up after tracing: constant folding, dead-node removal and shape inference.

The baked timestep makes the whole time embedding constant, so folding removes it from the graph.
Weights that only ever meet run-time values (convolution and linear weights: nearly all bytes) are
never read during folding, so a multi-GB graph is folded without copies of its weights.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

PROTOBUF_LIMIT = 2_000_000_000
log = logging.getLogger(__name__)


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the initializers held in memory."""
    return sum(len(t.raw_data) for t in model.graph.initializer)


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX shape inference, through a file when the model is too large for one protobuf."""
    if weight_bytes(model) < PROTOBUF_LIMIT:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    with tempfile.TemporaryDirectory(prefix="cleandift-shapes-") as folder:
        source, target = Path(folder) / "in.onnx", Path(folder) / "out.onnx"
        onnx.save_model(
            model, str(source), save_as_external_data=True, all_tensors_to_one_file=True
        )
        onnx.shape_inference.infer_shapes_path(str(source), str(target), data_prop=True)
        return onnx.load(str(target))


def _fold_once(model: onnx.ModelProto) -> onnx.ModelProto:
    ort.set_default_logger_severity(3)  # folding runs ORT; its per-node warnings are noise here
    graph = gs.import_onnx(infer_shapes(model))
    graph.fold_constants(error_ok=True).cleanup().toposort()
    folded = gs.export_onnx(graph, do_type_check=False)
    folded.producer_name, folded.producer_version = model.producer_name, model.producer_version
    del folded.graph.value_info[:]
    return folded


def constant_values(graph: onnx.GraphProto) -> set[str]:
    """Names whose values folding may know before any input arrives.

    Initializers, the outputs of Shape and Size (static dimensions fold), and the outputs of nodes
    (in topological order) that read only such names. Over-counting only reads a weight early.
    """
    known = {t.name for t in graph.initializer} | {""}
    for node in graph.node:
        if node.op_type in ("Shape", "Size") or all(name in known for name in node.input):
            known.update(node.output)
    return known


def folding_inputs(graph: onnx.GraphProto) -> set[str]:
    """Names read by the nodes constant folding may evaluate (all inputs constant): the prompt,
    the time-embedding MLP, cross-attention key/value projections of a baked prompt."""
    known = constant_values(graph)
    return {
        name for node in graph.node if all(i in known for i in node.input) for name in node.input
    }


def load_weights(model: onnx.ModelProto, base_dir: Path, only: set[str] | None = None) -> None:
    """Read the initializers still on disk (all, or those named in `only`) into `model`."""
    for tensor in model.graph.initializer:
        if uses_external_data(tensor) and (only is None or tensor.name in only):
            load_external_data_for_tensor(tensor, str(base_dir))


def fold_and_clean(
    model: onnx.ModelProto, base_dir: Path, max_passes: int = 3
) -> tuple[onnx.ModelProto, int, int]:
    """Fold constants (shapes included, once known) and drop dead nodes until nothing changes;
    return the shape-inferred graph, all weights read from `base_dir`, with node counts before and
    after."""
    before = count = len(model.graph.node)
    for _ in range(max_passes):
        load_weights(model, base_dir, only=folding_inputs(model.graph))
        model = _fold_once(model)
        if len(model.graph.node) == count:
            break
        count = len(model.graph.node)
    model = infer_shapes(model)
    load_weights(model, base_dir)
    after = len(model.graph.node)
    log.info("graph clean-up: %d nodes -> %d nodes", before, after)
    return model, before, after
