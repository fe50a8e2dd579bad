"""Attention fusion for ONNX Runtime on the CPU: an ORT-only rewrite of the standard graph.

The standard (opset 17) export spells every `scaled_dot_product_attention` out as
`Reshape -> Transpose -> Mul(sqrt(scale))` for q and k, `MatMul -> Softmax -> MatMul` with v, then
`Transpose -> Reshape` back to `[B, S, heads*head_dim]`. Run as is, ONNX Runtime materialises the
`[B, heads, S, S]` scores: 340 MB per head at 768 px, which makes the CPU path slow and memory
hungry. `fuse_attention` replaces each such subgraph with one `com.microsoft.MultiHeadAttention`
node, whose fp32 CPU kernel tiles the computation (flash attention) and never holds the scores.
The TensorRT graph stays standard: this rewrite is only ever applied to a copy for ONNX Runtime.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

MS_DOMAIN = "com.microsoft"
FUSED_OP = "MultiHeadAttention"

_HEADS_FIRST = [0, 2, 1, 3]
_KEYS_TRANSPOSED = [0, 2, 3, 1]


@dataclass(frozen=True)
class _Match:
    """One attention subgraph: its inputs, output, head count, scale and its last node."""

    query: str
    key: str
    value: str
    output: str
    num_heads: int
    scale: float | None
    replaced: onnx.NodeProto


class _GraphIndex:
    """Producers, consumers and constant values of one graph, for pattern matching."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        self.initializers = {init.name: init for init in graph.initializer}
        self.graph_outputs = {out.name for out in graph.output}

    def node(self, name: str, op_type: str) -> onnx.NodeProto | None:
        """The node producing `name` if it is an `op_type` node."""
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    def only_consumer(self, name: str, op_type: str) -> onnx.NodeProto | None:
        """The single consumer of `name` if it is an `op_type` node and `name` is internal."""
        users = self.consumers.get(name, [])
        if len(users) != 1 or users[0].op_type != op_type or name in self.graph_outputs:
            return None
        return users[0]

    def constant(self, name: str) -> np.ndarray | None:
        """The value of `name` when it is an initializer with data here or a Constant node."""
        if name in self.initializers:
            init = self.initializers[name]
            if init.data_location == onnx.TensorProto.EXTERNAL:
                return None
            return numpy_helper.to_array(init)
        node = self.node(name, "Constant")
        if node is None:
            return None
        for attribute in node.attribute:
            if attribute.name == "value":
                return numpy_helper.to_array(attribute.t)
        return None


def _attribute(node: onnx.NodeProto, name: str) -> object:
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return None


def _perm(node: onnx.NodeProto | None) -> list[int] | None:
    if node is None:
        return None
    perm = _attribute(node, "perm")
    return list(perm) if isinstance(perm, list) else None


def _split_heads(index: _GraphIndex, name: str, perm: list[int]) -> tuple[onnx.NodeProto, ...]:
    """`Reshape([B,S,heads,dim]) -> Transpose(perm)` producing `name`, or ()."""
    transpose = index.node(name, "Transpose")
    if _perm(transpose) != perm or transpose is None:
        return ()
    reshape = index.node(transpose.input[0], "Reshape")
    if reshape is None:
        return ()
    return reshape, transpose


def _num_heads(index: _GraphIndex, reshape: onnx.NodeProto) -> int | None:
    """The head count from a `[B, S, heads, dim]` target shape (constant or Concat of parts)."""
    shape = index.constant(reshape.input[1])
    if shape is not None:
        return int(shape.reshape(-1)[2]) if shape.size == 4 and shape.reshape(-1)[2] > 0 else None
    concat = index.node(reshape.input[1], "Concat")
    if concat is None or len(concat.input) != 4:
        return None
    heads = index.constant(concat.input[2])
    return int(heads.reshape(-1)[0]) if heads is not None and heads.size == 1 else None


def _scale(index: _GraphIndex, sqrt_name: str) -> tuple[bool, float | None]:
    """(recognised, scale): the scale is `sqrt_name`'s square; None means 1/sqrt(head_dim).

    The exporter multiplies q and k each by sqrt(scale): a folded constant for a given scale,
    `Sqrt(Cast(Div(1, Sqrt(head_dim))))` for the default one.
    """
    folded = index.constant(sqrt_name)
    if folded is not None:
        return folded.size == 1, float(folded.reshape(-1)[0]) ** 2
    sqrt = index.node(sqrt_name, "Sqrt")
    if sqrt is None:
        return False, None
    given = index.constant(sqrt.input[0])
    if given is not None:
        return given.size == 1, float(given.reshape(-1)[0])
    cast = index.node(sqrt.input[0], "Cast")
    divide = index.node(cast.input[0], "Div") if cast is not None else None
    one = index.constant(divide.input[0]) if divide is not None else None
    default = one is not None and one.size == 1 and float(one.reshape(-1)[0]) == 1.0
    return default, None


def _scaled_side(
    index: _GraphIndex, name: str, perm: list[int]
) -> tuple[tuple[onnx.NodeProto, ...], str] | None:
    """`Mul(split_heads(x), s)` producing `name`: (nodes, s)."""
    mul = index.node(name, "Mul")
    if mul is None:
        return None
    for side, other in ((0, 1), (1, 0)):
        nodes = _split_heads(index, mul.input[side], perm)
        if nodes:
            return (*nodes, mul), mul.input[other]
    return None


def _match(index: _GraphIndex, softmax: onnx.NodeProto) -> _Match | None:
    """The attention subgraph around `softmax`, or None when it does not have the SDPA shape."""
    if _attribute(softmax, "axis") not in (-1, 3):
        return None
    scores = index.node(softmax.input[0], "MatMul")
    if scores is None or index.only_consumer(scores.output[0], "Softmax") is None:
        return None
    query_side = _scaled_side(index, scores.input[0], _HEADS_FIRST)
    key_side = _scaled_side(index, scores.input[1], _KEYS_TRANSPOSED)
    mix = index.only_consumer(softmax.output[0], "MatMul")
    if query_side is None or key_side is None or mix is None or mix.input[0] != softmax.output[0]:
        return None
    (query_nodes, query_scale), (key_nodes, key_scale) = query_side, key_side
    value_nodes = _split_heads(index, mix.input[1], _HEADS_FIRST)
    merge = index.only_consumer(mix.output[0], "Transpose")
    merged = index.only_consumer(merge.output[0], "Reshape") if merge is not None else None
    if not value_nodes or _perm(merge) != _HEADS_FIRST or merged is None:
        return None
    recognised, scale = _scale(index, query_scale)
    num_heads = _num_heads(index, query_nodes[0])
    if _scale(index, key_scale) != (True, scale) or not recognised or num_heads is None:
        return None
    return _Match(
        query=query_nodes[0].input[0],
        key=key_nodes[0].input[0],
        value=value_nodes[0].input[0],
        output=merged.output[0],
        num_heads=num_heads,
        scale=scale,
        replaced=merged,
    )


def _fused_node(match: _Match, number: int) -> onnx.NodeProto:
    node = helper.make_node(
        FUSED_OP,
        [match.query, match.key, match.value],
        [match.output],
        name=f"FusedMultiHeadAttention_{number}",
        domain=MS_DOMAIN,
        num_heads=match.num_heads,
    )
    if match.scale is not None:
        node.attribute.append(helper.make_attribute("scale", match.scale))
    return node


def _remove_dead_nodes(graph: onnx.GraphProto) -> None:
    """Drop nodes whose outputs nobody reads (the replaced subgraphs' shape arithmetic)."""
    while True:
        needed = {out.name for out in graph.output}
        for node in graph.node:
            needed.update(node.input)
        alive = [node for node in graph.node if any(out in needed for out in node.output)]
        if len(alive) == len(graph.node):
            return
        del graph.node[:]
        graph.node.extend(alive)


def _use_ms_domain(model: onnx.ModelProto) -> None:
    if not any(opset.domain == MS_DOMAIN for opset in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))


def fuse_attention(model: onnx.ModelProto) -> int:
    """Rewrite every decomposed attention in `model` (in place) into MultiHeadAttention.

    Weights are not touched, so the model may be loaded without its external data. Returns the
    number of fused attention nodes (0 leaves the graph unchanged).
    """
    graph = model.graph
    index = _GraphIndex(graph)
    matches = [m for node in graph.node if node.op_type == "Softmax" if (m := _match(index, node))]
    if not matches:
        return 0
    fused_at = {id(match.replaced): _fused_node(match, i) for i, match in enumerate(matches)}
    rewritten = [fused_at.get(id(node), node) for node in graph.node]
    del graph.node[:]
    graph.node.extend(rewritten)
    _remove_dead_nodes(graph)
    _use_ms_domain(model)
    return len(matches)


def count_fused(model: onnx.ModelProto) -> int:
    """How many fused attention nodes `model` holds."""
    return sum(node.op_type == FUSED_OP and node.domain == MS_DOMAIN for node in model.graph.node)
