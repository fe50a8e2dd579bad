"""Tracing the export module to ONNX with the TorchScript exporter (fast; no onnxscript)."""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch

from ..models.dinov2 import DinoFeatures
from ..models.graph_module import ExportGraph
from ..models.graph_shapes import ShapePlan, dynamic_axes


def trace_to_onnx(
    module: ExportGraph | DinoFeatures,
    inputs: tuple[torch.Tensor, ...],
    plan: ShapePlan,
    opset: int,
    path: Path,
) -> onnx.ModelProto:
    """Trace `module` at the inputs' shape and return the graph, large weights not yet read.

    The exporter writes one file per tensor beside `path` when weights pass 2 GB; those stay on
    disk until `cleanup.fold_and_clean` has folded the graph without them.
    """
    names = module.input_names
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            inputs,
            str(path),
            input_names=names,
            output_names=list(module.taps),
            dynamic_axes=dynamic_axes(plan, names, module.taps),
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return onnx.load(str(path), load_external_data=False)
