"""The CPU attention rewrite: it must fire on real exports and change nothing but speed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from ort_helpers import Attention, Uint8Features, cosine, export, max_abs

from cleandift_deploy.models.loading import LoadedUNet
from cleandift_deploy.runtime.ort_attention import count_fused, fuse_attention
from cleandift_deploy.runtime.ort_session import create_session


@pytest.fixture(scope="module")
def tiny_graph(
    tiny: LoadedUNet, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Uint8Features]:
    """The tiny architecture's image -> us6 graph, exported once per module."""
    module = Uint8Features(tiny)
    image = torch.randint(0, 256, (1, 3, 128, 128), dtype=torch.uint8)
    path = tmp_path_factory.mktemp("tiny") / "model.onnx"
    return export(module, (image,), path, ["image"]), module


def _ops(model: onnx.ModelProto, op_type: str) -> int:
    return sum(node.op_type == op_type for node in model.graph.node)


def test_every_attention_of_the_image_graph_is_fused(
    tiny_graph: tuple[Path, Uint8Features],
) -> None:
    model = onnx.load(str(tiny_graph[0]), load_external_data=False)
    softmaxes = _ops(model, "Softmax")
    fused = fuse_attention(model)
    assert softmaxes > 0
    assert fused == softmaxes == count_fused(model)
    assert _ops(model, "Softmax") == 0
    assert _ops(model, "MatMul") < _ops(
        onnx.load(str(tiny_graph[0]), load_external_data=False), "MatMul"
    )


def test_fused_session_matches_plain_session_and_torch(
    tiny_graph: tuple[Path, Uint8Features],
) -> None:
    path, module = tiny_graph
    image = torch.randint(0, 256, (2, 3, 128, 192), dtype=torch.uint8)
    with torch.no_grad():
        reference = module(image).numpy()
    feed = {"image": image.numpy()}
    plain = create_session(path, fuse=False).run(None, feed)[0]
    fast = create_session(path).run(None, feed)[0]
    bound = 1e-4 * float(np.abs(reference).max())
    for name, out in (("plain", plain), ("fused", fast)):
        error, similarity = max_abs(out, reference), cosine(out, reference)
        assert similarity >= 0.99999 and error <= bound, (
            f"{name}: cos {similarity}, max abs {error}"
        )
    assert max_abs(fast, plain) <= bound, f"fused vs plain max abs {max_abs(fast, plain)}"


@pytest.mark.parametrize("heads, scale", [(4, 0.3), (2, None), (1, None)])
def test_head_count_and_scale_are_carried_over(
    tmp_path: Path, heads: int, scale: float | None
) -> None:
    module = Attention(heads, scale)
    q, k, v = torch.randn(2, 9, 16), torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    path = export(module, (q, k, v), tmp_path / "attention.onnx", ["q", "k", "v"])
    model = onnx.load(str(path), load_external_data=False)
    assert fuse_attention(model) == 1
    q, k, v = torch.randn(3, 13, 16), torch.randn(3, 7, 16), torch.randn(3, 7, 16)
    reference = module(q, k, v).numpy()
    out = create_session(path).run(None, {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()})[0]
    assert cosine(out, reference) >= 0.99999
    assert max_abs(out, reference) <= 1e-5 * float(np.abs(reference).max()) + 1e-6


def test_masked_attention_is_left_alone(tmp_path: Path) -> None:
    module = Attention(2, masked=True)
    q, k, v = torch.randn(1, 6, 8), torch.randn(1, 4, 8), torch.randn(1, 4, 8)
    path = export(module, (q, k, v), tmp_path / "masked.onnx", ["q", "k", "v"])
    model = onnx.load(str(path), load_external_data=False)
    before = model.SerializeToString()
    assert fuse_attention(model) == 0
    assert model.SerializeToString() == before
    out = create_session(path).run(None, {"q": q.numpy(), "k": k.numpy(), "v": v.numpy()})[0]
    assert max_abs(out, module(q, k, v).numpy()) <= 1e-5
