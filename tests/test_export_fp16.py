"""The mixed-fp16 pass converts weights in place: no initializer is held in both precisions
unless an fp32 node also reads it."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from cleandift_deploy.export.fp16 import to_mixed_fp16


def _graph(rng: np.random.Generator) -> onnx.ModelProto:
    """x -> Conv(w_conv) -> Add(shared) -> InstanceNorm -> Mul(shared): `shared` is read by an
    fp16 node and by a keep-listed fp32 node."""
    weights = {
        "w_conv": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "shared": rng.standard_normal((1, 4, 1, 1)).astype(np.float32),
        "scale": rng.standard_normal(4).astype(np.float32),
        "bias": rng.standard_normal(4).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w_conv"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c", "shared"], ["a"], name="add"),
        helper.make_node("InstanceNormalization", ["a", "scale", "bias"], ["n"], name="norm"),
        helper.make_node("Mul", ["n", "shared"], ["y"], name="keep_me"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model)


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_fp16_only_weights_are_converted_in_place() -> None:
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    reference = _run(_graph(np.random.default_rng(0)), x)
    model = to_mixed_fp16(_graph(np.random.default_rng(0)), keep=["keep_me"])
    onnx.checker.check_model(model)
    types = {t.name: t.data_type for t in model.graph.initializer}
    assert types["w_conv"] == TensorProto.FLOAT16 and "w_conv/fp16" not in types
    assert types["shared"] == TensorProto.FLOAT and types["shared/fp16"] == TensorProto.FLOAT16
    assert types["scale"] == types["bias"] == TensorProto.FLOAT
    got = _run(model, x)
    assert got.dtype == np.float32
    relative = np.abs(got - reference).max() / np.abs(reference).max()
    assert 0 < relative < 5e-3
