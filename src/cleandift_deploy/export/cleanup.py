"""Graph clean-up after tracing: constant folding, dead-node removal and shape inference.

The baked timestep makes the whole time embedding constant, so folding removes it from the graph.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort

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


def fold_and_clean(model: onnx.ModelProto, max_passes: int = 3) -> tuple[onnx.ModelProto, int, int]:
    """Fold constants (shapes included, once known) and drop dead nodes until nothing changes;
    return the shape-inferred graph with node counts before and after."""
    before = count = len(model.graph.node)
    for _ in range(max_passes):
        model = _fold_once(model)
        if len(model.graph.node) == count:
            break
        count = len(model.graph.node)
    model = infer_shapes(model)
    after = len(model.graph.node)
    log.info("graph clean-up: %d nodes -> %d nodes", before, after)
    return model, before, after
