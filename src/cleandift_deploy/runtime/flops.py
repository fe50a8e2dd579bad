"""Floating-point operations of an exported graph at one input shape, counted from the ONNX file.

Convolutions, matrix products (MatMul, Gemm, and therefore the attention of the standard graph)
and fused attention ops are counted as 2 x multiply-adds; element-wise work, normalisation and
resizing are left out, as trtexec-style TFLOP/s figures do. Shapes come from ONNX Runtime's
symbolic shape inference (ONNX's own stops at the Expand of a baked prompt) with the dynamic input
dimensions fixed, so the count is exact for the pruned graph as exported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from math import prod
from pathlib import Path
from typing import Any

from ..errors import CleanDiftError


def _shapes(graph: Any) -> dict[str, list[int]]:
    known: dict[str, list[int]] = {}
    for value in (*graph.input, *graph.value_info, *graph.output):
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            known[value.name] = [d.dim_value for d in dims]
    for tensor in graph.initializer:
        known[tensor.name] = list(tensor.dims)
    return known


def _conv(node: Any, shapes: Mapping[str, list[int]]) -> int:
    weight, output = shapes[node.input[1]], shapes[node.output[0]]
    per_output = prod(weight[1:])  # (C_in / groups) * kh * kw
    return 2 * prod(output) * per_output


def _matmul(node: Any, shapes: Mapping[str, list[int]]) -> int:
    left, output = shapes[node.input[0]], shapes[node.output[0]]
    return 2 * prod(output) * left[-1]


def _gemm(node: Any, shapes: Mapping[str, list[int]]) -> int:
    left, output = shapes[node.input[0]], shapes[node.output[0]]
    trans_a = next((a.i for a in node.attribute if a.name == "transA"), 0)
    inner = left[0] if trans_a else left[-1]
    return 2 * prod(output) * inner


def _attention(node: Any, shapes: Mapping[str, list[int]]) -> int:
    query, key = shapes[node.input[0]], shapes[node.input[1]]
    batch, tokens, width = query[0], query[-2], query[-1]
    if len(query) == 4:  # [B, heads, S, d]
        width = query[1] * query[3]
    return 4 * batch * tokens * key[-2] * width


COUNTERS = {
    "Conv": _conv,
    "ConvTranspose": _conv,
    "MatMul": _matmul,
    "Gemm": _gemm,
    "Attention": _attention,
}


def _fixed(model: Any, input_shapes: Mapping[str, Sequence[int]]) -> Any:
    for value in model.graph.input:
        if value.name not in input_shapes:
            continue
        dims = value.type.tensor_type.shape.dim
        for dim, size in zip(dims, input_shapes[value.name], strict=True):
            dim.Clear()
            dim.dim_value = int(size)
    return model


def count_flops(path: Path, input_shapes: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """FLOPs per counted op type of the graph at `path` for the given input shapes."""
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:
        raise CleanDiftError(
            f"cannot read {path} to count its FLOPs ({type(err).__name__})"
        ) from None
    inferred = SymbolicShapeInference.infer_shapes(_fixed(model, input_shapes), auto_merge=True)
    shapes = _shapes(inferred.graph)
    totals: dict[str, int] = {}
    for node in inferred.graph.node:
        counter = COUNTERS.get(node.op_type)
        if counter is None:
            continue
        try:
            flops = counter(node, shapes)
        except KeyError as missing:
            raise CleanDiftError(
                f"shape inference left {missing} of {node.name or node.op_type} in {path.name} "
                "unknown: FLOPs cannot be counted for this graph"
            ) from None
        totals[node.op_type] = totals.get(node.op_type, 0) + flops
    return totals
