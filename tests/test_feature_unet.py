"""FeatureUNet equals the taps that forward hooks capture on the full diffusers UNet."""

from __future__ import annotations

import pytest
import torch
from model_helpers import SMALL21, hooked_taps

from cleandift_deploy.errors import CleanDiftError
from cleandift_deploy.models import TAP_NAMES, FeatureUNet, build_unet, tap_specs
from cleandift_deploy.models.configs import TINY


@pytest.fixture(scope="module", params=["tiny", "small21"])
def unet(request: pytest.FixtureRequest) -> torch.nn.Module:
    config = TINY.unet_config() if request.param == "tiny" else dict(SMALL21)
    torch.manual_seed(7)
    return build_unet(config).eval()


@pytest.mark.parametrize(("batch", "height", "width"), [(1, 8, 8), (2, 16, 24), (3, 24, 8)])
def test_every_tap_matches_hooks(
    unet: torch.nn.Module, batch: int, height: int, width: int
) -> None:
    latents = torch.randn(batch, 4, height, width)
    context = torch.randn(1, 77, unet.config.cross_attention_dim)
    expected = hooked_taps(unet, latents, context, 261.0, TAP_NAMES)
    with torch.no_grad():
        got = FeatureUNet(unet, taps=TAP_NAMES, timestep=261.0)(latents, context)
    assert list(got) == list(TAP_NAMES)
    specs = tap_specs(unet.config)
    for name in TAP_NAMES:
        stride = specs[name].stride // 8
        assert got[name].shape == (batch, specs[name].channels, height // stride, width // stride)
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=0)


@pytest.mark.parametrize("tap", ["mid", "us2", "us4", "us6", "us10"])
def test_single_tap_and_timestep_input_match_hooks(unet: torch.nn.Module, tap: str) -> None:
    latents = torch.randn(2, 4, 16, 8)
    context = torch.randn(2, 77, unet.config.cross_attention_dim)
    expected = hooked_taps(unet, latents, context, 500.0, (tap,))
    model = FeatureUNet(unet, taps=(tap,), timestep=None)
    with torch.no_grad():
        got = model(latents, context, torch.tensor([500.0]))
    torch.testing.assert_close(got[tap], expected[tap], atol=1e-5, rtol=0)


def _param_prefixes(module: torch.nn.Module) -> set[str]:
    return {".".join(name.split(".")[:4]) for name, _ in module.named_parameters()}


def test_layers_after_the_deepest_tap_are_not_held(tiny) -> None:
    us6 = FeatureUNet(tiny.unet, taps=("us6",))
    names = [name for name, _ in us6.named_parameters()]
    assert any(n.startswith("up_blocks.1.upsamplers") for n in names)
    assert not any(
        n.startswith(("up_blocks.2", "up_blocks.3", "conv_out", "conv_norm_out")) for n in names
    )
    us4 = FeatureUNet(tiny.unet, taps=("us4",))
    kept = _param_prefixes(us4)
    assert "up_blocks.1.resnets.0" in kept
    assert "up_blocks.1.resnets.1" not in kept
    assert not any(p.startswith("up_blocks.1.upsamplers") for p in kept)
    assert sum(p.numel() for p in us4.parameters()) < sum(p.numel() for p in us6.parameters())


def test_unknown_tap_lists_the_valid_ones(tiny) -> None:
    with pytest.raises(CleanDiftError, match=r"unknown tap 'us11'.*mid, us1, .*us10"):
        FeatureUNet(tiny.unet, taps=("us6", "us11"))


@pytest.mark.parametrize(
    ("latents", "context", "message"),
    [
        ((1, 3, 8, 8), (1, 77, 32), "latents has 3 channels; the model expects 4"),
        ((1, 4, 12, 8), (1, 77, 32), r"latent size 12x8 .* use 8x8 or 16x8"),
        ((1, 4, 8, 8), (1, 77, 48), "width 48 does not match the UNet's cross-attention width 32"),
        ((2, 4, 8, 8), (3, 77, 32), "batch 3 must be 1 or match"),
    ],
)
def test_bad_inputs_fail_in_one_line(tiny, latents, context, message) -> None:
    model = FeatureUNet(tiny.unet)
    with pytest.raises(CleanDiftError, match=message) as info:
        model(torch.randn(latents), torch.randn(context))
    assert "\n" not in str(info.value)
