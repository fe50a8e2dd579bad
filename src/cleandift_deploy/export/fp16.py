"""Mixed fp16: a graph pass that runs most nodes in fp16 and keeps fp32 where fp16 is unsafe.

Every node that computes on floats is assigned fp16 or fp32. Kept in fp32: attention scores and
softmax (SD2.1 upcasts attention), normalisation (InstanceNormalization holds GroupNorm's
statistics in opset 17; LayerNormalization), Resize, and any node named in a keep-list (from
calibration). Initializers read by fp16 nodes are converted (clamped to the fp16 range); a Cast is
inserted wherever a tensor crosses between precisions. Graph inputs and outputs keep their types,
so fp32 and fp16 artifacts have the same interface. The baked time embedding is folded into
constants before this pass, so it was computed in fp32.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
FLOAT_TYPES = frozenset({FLOAT, HALF})
FP32_OPS = frozenset(
    {
        "Softmax",
        "InstanceNormalization",
        "LayerNormalization",
        "GroupNormalization",
        "Resize",
        "ReduceMean",
        "Pow",
        "Sqrt",
    }
)
"""Ops whose fp16 version loses range or precision: kept in fp32 wherever they appear."""
SCORE_OPS = frozenset({"Mul", "Div", "Add", "Where", "Cast"})
"""Elementwise ops that may sit between an attention score MatMul and its Softmax."""
TIME_SCOPES = ("/time_proj/", "/time_embedding/", "/time_emb_proj/")
"""Name scopes of the timestep embedding; with a dynamic batch it is not folded away."""
TYPE_BLIND_OPS = frozenset({"Shape", "Size"})
"""Ops that read a float tensor's shape only: any float type will do."""
FP16_MAX = float(np.finfo(np.float16).max)


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every typed tensor: inputs, outputs, value_info and initializers."""
    graph = model.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for info in (*graph.input, *graph.value_info, *graph.output):
        if info.type.HasField("tensor_type"):
            types[info.name] = info.type.tensor_type.elem_type
    return types


def attention_score_nodes(nodes: Iterable[onnx.NodeProto]) -> set[str]:
    """Names of the score MatMuls (and elementwise ops) that feed each Softmax."""
    nodes = list(nodes)
    producer = {out: node for node in nodes for out in node.output}
    found: set[str] = set()
    for node in nodes:
        if node.op_type != "Softmax":
            continue
        current = producer.get(node.input[0])
        while current is not None and current.op_type in SCORE_OPS:
            found.add(current.name)
            current = producer.get(current.input[0])
        if current is not None and current.op_type == "MatMul":
            found.add(current.name)
    return found


def time_embedding_nodes(nodes: Iterable[onnx.NodeProto]) -> set[str]:
    """The timestep embedding's nodes and everything they are computed from (the timestep
    constant, its expansion to the batch), stopping at Shape reads of other tensors."""
    nodes = list(nodes)
    producer = {out: node for node in nodes for out in node.output}
    pending = [n for n in nodes if any(scope in n.name for scope in TIME_SCOPES)]
    found: set[str] = set()
    while pending:
        node = pending.pop()
        if node.name in found:
            continue
        found.add(node.name)
        if node.op_type in TYPE_BLIND_OPS:
            continue
        pending.extend(producer[name] for name in node.input if name in producer)
    return found


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name, so keep-lists can refer to it."""
    taken = {n.name for n in model.graph.node if n.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{index}"
            while node.name in taken:
                node.name += "_"
            taken.add(node.name)


def fp32_nodes(model: onnx.ModelProto, keep: Iterable[str]) -> set[str]:
    """Every node to run in fp32: unsafe op types, attention scores, the timestep embedding,
    and the keep-list."""
    graph = model.graph
    unsafe = {n.name for n in graph.node if n.op_type in FP32_OPS}
    timestep = time_embedding_nodes(graph.node)
    return unsafe | attention_score_nodes(graph.node) | timestep | set(keep)


def _half_values(tensor: TensorProto) -> np.ndarray:
    values = numpy_helper.to_array(tensor).astype(np.float32)
    return np.clip(values, -FP16_MAX, FP16_MAX).astype(np.float16)


def _to_half(tensor: TensorProto, name: str) -> TensorProto:
    return numpy_helper.from_array(_half_values(tensor), name)


def _add_initializer(graph: onnx.GraphProto, name: str, values: np.ndarray) -> None:
    """Write `values` as a new initializer straight into `graph` (one copy of the bytes)."""
    tensor = graph.initializer.add()
    tensor.name = name
    tensor.data_type = helper.np_dtype_to_tensor_dtype(values.dtype)
    tensor.dims.extend(values.shape)
    tensor.raw_data = values.tobytes()


def _data_inputs(node: onnx.NodeProto) -> list[str]:
    """The inputs whose type follows the node's precision (Resize: only the data, not scales)."""
    if node.op_type in TYPE_BLIND_OPS:
        return []
    return list(node.input[:1] if node.op_type == "Resize" else node.input)


class _Rewriter:
    """State of one pass: current tensor types, Casts and fp16 initializer copies made so far."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.types = tensor_types(model)
        graph = model.graph
        sources = {t.name for t in graph.initializer} | {i.name for i in graph.input}
        self.now = {n: t for n, t in self.types.items() if t in FLOAT_TYPES and n in sources}
        self.initializers = {t.name: t for t in graph.initializer}
        self.half_initializers: dict[str, TensorProto] = {}
        self.halved: set[str] = set()
        self.casts: dict[tuple[str, int], str] = {}
        self.nodes: list[onnx.NodeProto] = []

    def cast(self, name: str, to: int) -> str:
        """A tensor holding `name` converted to `to`, made once and shared."""
        key = (name, to)
        if key not in self.casts:
            cast_name = f"{name}/to_{'fp16' if to == HALF else 'fp32'}"
            self.nodes.append(helper.make_node("Cast", [name], [cast_name], name=cast_name, to=to))
            self.casts[key] = cast_name
            self.now[cast_name] = to
        return self.casts[key]

    def converted(self, name: str, to: int) -> str:
        """`name` in type `to`: an fp16 copy of an initializer, or a Cast of anything else."""
        if to == HALF and name in self.initializers:
            if name not in self.half_initializers:
                self.half_initializers[name] = _to_half(self.initializers[name], f"{name}/fp16")
                self.now[f"{name}/fp16"] = HALF
            return f"{name}/fp16"
        return self.cast(name, to)

    def halve_fp16_only_initializers(self, model: onnx.ModelProto, targets: dict[str, int]) -> None:
        """Mark the fp32 initializers that only fp16 nodes read as fp16 under their own name
        (converted when the result is built); initializers with any other reader keep fp32 and
        get an fp16 copy where needed."""
        readers: dict[str, set[int]] = {}
        for node in model.graph.node:
            data = set(_data_inputs(node))
            for name in node.input:
                if name in self.initializers:
                    target = targets.get(node.name, FLOAT) if name in data else FLOAT
                    readers.setdefault(name, set()).add(target)
        outputs = {o.name for o in model.graph.output}
        for name, wanted in readers.items():
            if wanted == {HALF} and self.now.get(name) == FLOAT and name not in outputs:
                self.halved.add(name)
                self.now[name] = self.types[name] = HALF

    def visit(self, node: onnx.NodeProto, target: int) -> None:
        """Rewrite one node to compute in `target`, converting its float inputs as needed."""
        if node.op_type not in TYPE_BLIND_OPS:
            data_inputs = len(_data_inputs(node))
            for index, name in enumerate(node.input[:data_inputs]):
                if name and self.now.get(name, target) != target:
                    node.input[index] = self.converted(name, target)
            self._retype_attributes(node, target)
        for out in node.output:
            if self.types.get(out) in FLOAT_TYPES:
                self.now[out] = target
        self.nodes.append(node)

    @staticmethod
    def _retype_attributes(node: onnx.NodeProto, target: int) -> None:
        for attribute in node.attribute:
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i in FLOAT_TYPES:
                attribute.i = target
            elif attribute.name == "value" and attribute.t.data_type in FLOAT_TYPES - {target}:
                values = numpy_helper.to_array(attribute.t).astype(
                    np.float16 if target == HALF else np.float32
                )
                attribute.t.CopyFrom(numpy_helper.from_array(values, attribute.t.name))

    def computes_on_floats(self, node: onnx.NodeProto) -> bool:
        """Whether any input or output of `node` is a float tensor."""
        names = [*node.input, *node.output]
        return any(self.types.get(n) in FLOAT_TYPES for n in names if n)


def _restore_output_types(rewriter: _Rewriter, model: onnx.ModelProto) -> None:
    """Graph outputs computed in fp16 get a final Cast, so the interface stays fp32."""
    for output in model.graph.output:
        if rewriter.now.get(output.name) != HALF:
            continue
        inner = f"{output.name}/fp16"
        for node in rewriter.nodes:
            for field in (node.input, node.output):
                for index, name in enumerate(field):
                    if name == output.name:
                        field[index] = inner
        rewriter.nodes.append(
            helper.make_node(
                "Cast", [inner], [output.name], name=f"{output.name}/to_fp32", to=FLOAT
            )
        )


def to_mixed_fp16(model: onnx.ModelProto, keep: Iterable[str] = ()) -> onnx.ModelProto:
    """The fp16 version of a shape-inferred fp32 graph, with fp32 islands where unsafe.

    `model` is consumed (left without weights): initializers that only fp16 nodes read become fp16
    under their own name, written once into the returned model, so the pass holds the fp32 graph
    plus the fp16 weights, not two more copies. The result carries no intermediate types (they
    changed); the saved file's full check infers them again.
    """
    name_nodes(model)
    keep_fp32 = fp32_nodes(model, keep)
    rewriter = _Rewriter(model)
    targets: dict[str, int] = {
        node.name: FLOAT if node.name in keep_fp32 else HALF
        for node in model.graph.node
        if rewriter.computes_on_floats(node)
    }
    rewriter.halve_fp16_only_initializers(model, targets)
    for node in model.graph.node:
        if node.name in targets:
            rewriter.visit(node, targets[node.name])
        else:
            rewriter.nodes.append(node)
    _restore_output_types(rewriter, model)
    graph = model.graph
    del graph.node[:]
    graph.node.extend(rewriter.nodes)
    del graph.value_info[:]
    return _with_weights(model, rewriter)


def _with_weights(model: onnx.ModelProto, rewriter: _Rewriter) -> onnx.ModelProto:
    """A new model: `model`'s rewritten graph with the initializers its nodes read, converted as
    the pass decided, each written once into the new model. `model` is left without weights.

    Protobuf (upb) frees a message's bytes only with the whole model, so converting tensors in
    place, or moving them between lists (which copies), would hold both precisions at once.
    """
    weights = list(model.graph.initializer)
    del model.graph.initializer[:]
    result = onnx.ModelProto()
    result.CopyFrom(model)
    used = {name for node in result.graph.node for name in node.input}
    for tensor in weights:
        if tensor.name not in used:
            continue
        if tensor.name in rewriter.halved:
            _add_initializer(result.graph, tensor.name, _half_values(tensor))
        else:
            result.graph.initializer.add().CopyFrom(tensor)
    for tensor in rewriter.half_initializers.values():
        result.graph.initializer.add().CopyFrom(tensor)
    return result
