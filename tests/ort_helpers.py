"""Small ONNX graphs for the ONNX Runtime speed tests, exported with the TorchScript exporter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from cleandift_deploy.models import FeatureUNet, ImageFeatureModel, VAEEncoder, load_vae
from cleandift_deploy.models.loading import LoadedUNet


class Uint8Features(nn.Module):
    """`uint8 image [B,3,H,W] -> us6`: the deployed graph's contract, small enough for tests."""

    def __init__(self, loaded: LoadedUNet) -> None:
        super().__init__()
        vae = load_vae(None, loaded.arch, random_init=True)
        width = int(loaded.unet.config.cross_attention_dim)
        prompt = torch.randn(1, 77, width)
        features = FeatureUNet(loaded.unet, taps=("us6",))
        self.model = ImageFeatureModel(VAEEncoder(vae), features, prompt).eval()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Features of a uint8 batch."""
        return self.model(image.to(torch.float32) / 127.5 - 1.0)["us6"]


class Attention(nn.Module):
    """Multi-head attention as diffusers writes it, with an optional fixed scale and mask."""

    def __init__(self, heads: int, scale: float | None = None, masked: bool = False) -> None:
        super().__init__()
        self.heads, self.scale, self.masked = heads, scale, masked

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """`[B,S,C], [B,L,C], [B,L,C] -> [B,S,C]`."""
        batch, _, width = q.shape

        def split(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(batch, -1, self.heads, width // self.heads).transpose(1, 2)

        mask = (k[:, None, None, :, 0] > 0) if self.masked else None
        out = F.scaled_dot_product_attention(split(q), split(k), split(v), mask, scale=self.scale)
        return out.transpose(1, 2).reshape(batch, -1, width)


def export(
    module: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, names: list[str]
) -> Path:
    """Export `module` with every axis but the channels dynamic; weights in one external file."""
    dynamic = {
        name: {0: "b", 2: "h", 3: "w"} if x.ndim == 4 else {0: "b", 1: "s"}
        for name, x in zip(names, inputs, strict=True)
    }
    traced = path.with_name(path.stem + ".traced.onnx")
    with torch.no_grad():
        torch.onnx.export(
            module,
            inputs,
            str(traced),
            dynamo=False,
            opset_version=17,
            input_names=names,
            output_names=["out"],
            dynamic_axes=dynamic,
        )
    model = onnx.load(str(traced))
    onnx.save(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=path.name + ".data",
        size_threshold=0,
    )
    traced.unlink()
    return path


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays, flattened, in float64."""
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def max_abs(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference."""
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())
