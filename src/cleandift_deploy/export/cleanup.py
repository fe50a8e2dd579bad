"""Graph clean-up after tracing: constant folding, dead-node removal and shape inference.

The baked timestep makes the whole time embedding constant, so folding removes it from the graph.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import onnx
import onnx_graphsurgeon as gs

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


def fold_and_clean(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int, int]:
    """Fold constants, drop dead nodes, sort, infer shapes; return it with node counts before
    and after."""
    before = len(model.graph.node)
    graph = gs.import_onnx(model)
    graph.fold_constants(error_ok=True).cleanup().toposort()
    cleaned = gs.export_onnx(graph, do_type_check=False)
    cleaned.producer_name = model.producer_name
    cleaned.producer_version = model.producer_version
    del cleaned.graph.value_info[:]
    cleaned = infer_shapes(cleaned)
    after = len(cleaned.graph.node)
    log.info("graph clean-up: %d nodes -> %d nodes", before, after)
    return cleaned, before, after
