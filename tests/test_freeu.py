"""FreeU: the FFT-free filter against diffusers' `fourier_filter`, FeatureUNet with FreeU against
diffusers' `enable_freeu` under forward hooks, where FreeU acts, and the exported graph."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.utils.torch_utils import fourier_filter
from export_helpers import assert_fp32_agreement, run_onnx
from model_helpers import SMALL21, _tap_module

from cleandift_deploy.export import ExportOptions, export_onnx
from cleandift_deploy.manifest import Manifest, sidecar_path
from cleandift_deploy.models import FeatureUNet, build_unet, random_prompt_embedding
from cleandift_deploy.models.freeu import FreeU, scale_lowest_frequencies
from cleandift_deploy.models.loading import LoadedUNet

ALL_TAPS = ("mid", "us1", "us2", "us3", "us4", "us5", "us6", "us7", "us8", "us9", "us10")
GEOAWARE = FreeU(b1=1.2, b2=1.4, s1=0.9, s2=0.2)


def freeu_hooked_taps(
    unet: UNet2DConditionModel,
    freeu: FreeU,
    latents: torch.Tensor,
    context: torch.Tensor,
    timestep: float,
) -> dict[str, torch.Tensor]:
    """Taps of a copy of the full diffusers UNet with `enable_freeu`, cloned inside the hooks
    (diffusers scales the backbone in place, which would rewrite an uncloned capture)."""
    unet = copy.deepcopy(unet)
    unet.enable_freeu(s1=freeu.s1, s2=freeu.s2, b1=freeu.b1, b2=freeu.b2)
    captured: dict[str, torch.Tensor] = {}

    def hook(_module: Any, _inputs: Any, output: Any, name: str) -> None:
        value = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
        captured[name] = value.clone()

    for name in ALL_TAPS:
        _tap_module(unet, name).register_forward_hook(
            lambda m, i, o, name=name: hook(m, i, o, name)
        )
    with torch.no_grad():
        unet(latents, torch.tensor(timestep), context.expand(latents.shape[0], -1, -1))
    return captured


@pytest.mark.parametrize(
    ("height", "width"), [(1, 1), (1, 4), (2, 2), (3, 5), (8, 8), (12, 7), (24, 24), (15, 30)]
)
def test_filter_equals_diffusers_fourier_filter(height: int, width: int) -> None:
    x = torch.randn(2, 3, height, width)
    for scale in (0.9, 0.2, 1.7):
        expected = fourier_filter(x, threshold=1, scale=scale)
        got = scale_lowest_frequencies(x, scale)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (scale_lowest_frequencies(x, 0.2) - x).abs().max() > 1e-3


def test_filter_exports_without_dft(tmp_path: Path) -> None:
    """diffusers' filter does not export (`aten::fft_fftn`); this one does, at dynamic sizes."""

    class Filter(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return scale_lowest_frequencies(x, 0.2)

    out = tmp_path / "filter.onnx"
    axes = {"x": {2: "h", 3: "w"}, "y": {2: "h", 3: "w"}}
    torch.onnx.export(
        Filter(),
        (torch.randn(1, 4, 8, 8),),
        str(out),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes=axes,
        opset_version=17,
        dynamo=False,
    )
    assert "DFT" not in {node.op_type for node in onnx.load(str(out)).graph.node}
    for height, width in ((1, 1), (5, 3), (24, 24), (12, 9)):
        x = torch.randn(1, 4, height, width)
        got = run_onnx(out, {"x": x.numpy()})["y"]
        expected = fourier_filter(x, threshold=1, scale=0.2).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config", ["tiny", "small21"])
def test_feature_unet_freeu_equals_diffusers(tiny: LoadedUNet, config: str) -> None:
    unet = tiny.unet if config == "tiny" else build_unet(dict(SMALL21)).eval()
    width = int(unet.config.cross_attention_dim)
    context = torch.randn(1, 77, width)
    latents = torch.randn(2, 4, 16, 24)
    features = FeatureUNet(unet, ALL_TAPS, timestep=261.0, freeu=GEOAWARE).eval()
    with torch.no_grad():
        got = features(latents, context)
    expected = freeu_hooked_taps(unet, GEOAWARE, latents, context, 261.0)
    for name in ALL_TAPS:
        assert_fp32_agreement(expected[name].numpy(), got[name].numpy())


def test_freeu_acts_only_from_the_first_up_block(tiny: LoadedUNet) -> None:
    context = random_prompt_embedding("tiny")
    latents = torch.randn(1, 4, 16, 16)
    plain = FeatureUNet(tiny.unet, ALL_TAPS, timestep=100.0).eval()
    freeu = FeatureUNet(tiny.unet, ALL_TAPS, timestep=100.0, freeu=GEOAWARE).eval()
    neutral = FeatureUNet(tiny.unet, ALL_TAPS, 100.0, freeu=FreeU(1.0, 1.0, 1.0, 1.0)).eval()
    with torch.no_grad():
        off, on, unit = plain(latents, context), freeu(latents, context), neutral(latents, context)
    # Up block 0's input is untouched, in the output too (FreeU never writes in place).
    assert torch.equal(off["mid"], on["mid"])
    for name in ALL_TAPS[1:]:
        relative = (on[name] - off[name]).norm() / off[name].norm()
        assert relative > 1e-3, (name, float(relative))
        torch.testing.assert_close(unit[name], off[name], rtol=1e-5, atol=1e-5)


def test_exported_freeu_graph_equals_diffusers(tiny: LoadedUNet, tmp_path: Path) -> None:
    out = tmp_path / "freeu.onnx"
    taps = ("us3", "us6", "us8")
    options = ExportOptions(
        taps=taps,
        vae=False,
        prompt_input=True,
        batch=(1, 1, 2),
        size_range=((64, 64), (128, 192)),
        image_size=(64, 64),
        freeu=GEOAWARE,
        check_agreement=False,
    )
    export_onnx(tiny, out, options)
    assert Manifest.load(sidecar_path(out)).freeu == GEOAWARE.record()
    for batch, height, width in ((1, 8, 8), (2, 16, 24)):
        latents = torch.randn(batch, 4, height, width)
        context = torch.randn(batch, 77, 32)
        feeds = {"latents": latents.numpy(), "encoder_hidden_states": context.numpy()}
        got = run_onnx(out, feeds)
        expected = freeu_hooked_taps(tiny.unet, GEOAWARE, latents, context, tiny.timestep)
        for name in taps:
            assert_fp32_agreement(expected[name].numpy(), got[name])
