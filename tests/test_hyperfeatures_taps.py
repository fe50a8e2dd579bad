"""Residual-branch taps res0_0 .. res3_2 equal forward hooks on conv2 of the full diffusers UNet,
and FeatureUNet stops after the deepest one."""

from __future__ import annotations

import pytest
import torch
from model_helpers import SMALL21, hooked_taps

from cleandift_deploy.models import FeatureUNet, build_unet, tap_infos, tap_specs, validate_taps
from cleandift_deploy.models.configs import SD15, TINY
from cleandift_deploy.models.taps import RESNET_TAP_NAMES, deepest_tap

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module", params=["tiny", "small21"])
def unet(request: pytest.FixtureRequest) -> torch.nn.Module:
    config = TINY.unet_config() if request.param == "tiny" else dict(SMALL21)
    torch.manual_seed(11)
    return build_unet(config).eval()


@pytest.mark.parametrize(("batch", "height", "width"), [(1, 8, 8), (2, 16, 24)])
def test_residual_branches_match_conv2_hooks(
    unet: torch.nn.Module, batch: int, height: int, width: int
) -> None:
    latents = torch.randn(batch, 4, height, width)
    context = torch.randn(1, 77, unet.config.cross_attention_dim)
    taps = ("us6", *RESNET_TAP_NAMES)
    expected = hooked_taps(unet, latents, context, 261.0, taps)
    with torch.no_grad():
        got = FeatureUNet(unet, taps=taps, timestep=261.0)(latents, context)
    assert list(got) == list(taps)
    specs = tap_specs(unet.config)
    for name in taps:
        stride = specs[name].stride // 8
        assert got[name].shape == (batch, specs[name].channels, height // stride, width // stride)
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=0)
    resnet_out: list[torch.Tensor] = []
    handle = (
        unet.up_blocks[1]
        .resnets[2]
        .register_forward_hook(lambda _m, _i, out: resnet_out.append(out))
    )
    with torch.no_grad():
        unet(latents, torch.tensor(261.0), context.expand(batch, -1, -1))
    handle.remove()
    assert (resnet_out[0] - got["res1_2"]).abs().max() > 1e-2  # the shortcut was not added


@pytest.mark.parametrize("tap", ["res0_0", "res1_1", "res2_2", "res3_2"])
def test_single_branch_tap_with_timestep_input(unet: torch.nn.Module, tap: str) -> None:
    latents = torch.randn(2, 4, 16, 8)
    context = torch.randn(2, 77, unet.config.cross_attention_dim)
    expected = hooked_taps(unet, latents, context, -1.0, (tap,))
    with torch.no_grad():
        got = FeatureUNet(unet, taps=(tap,), timestep=None)(latents, context, torch.tensor([-1.0]))
    torch.testing.assert_close(got[tap], expected[tap], atol=1e-5, rtol=0)


def _kept(module: torch.nn.Module) -> set[str]:
    return {".".join(name.split(".")[:4]) for name, _ in module.named_parameters()}


def test_graph_stops_at_the_deepest_branch(tiny) -> None:
    assert deepest_tap(("us10", "res3_2", "us4")) == "res3_2"
    assert deepest_tap(("res2_1", "us8")) == "us8"
    kept = _kept(FeatureUNet(tiny.unet, taps=("res2_1",)))
    assert "up_blocks.2.resnets.1" in kept
    assert "up_blocks.2.attentions.0" in kept
    assert "up_blocks.2.attentions.1" not in kept  # the branch is read before attention 1
    assert not any(k.startswith(("up_blocks.2.resnets.2", "up_blocks.2.upsamplers")) for k in kept)
    everything = _kept(FeatureUNet(tiny.unet, taps=RESNET_TAP_NAMES))
    assert "up_blocks.3.resnets.2" in everything
    assert "up_blocks.3.attentions.2" not in everything
    assert not any(k.startswith(("conv_out", "conv_norm_out")) for k in everything)


def test_branch_tap_channels_and_strides_for_sd15() -> None:
    infos = {t.name: (t.channels, t.stride) for t in tap_infos(SD15.unet, RESNET_TAP_NAMES)}
    assert [infos[f"res{i}_{j}"][0] for i in range(4) for j in range(3)] == [1280] * 6 + [
        640
    ] * 3 + [320] * 3
    assert [infos[f"res{i}_0"][1] for i in range(4)] == [64, 32, 16, 8]
    assert validate_taps(("res3_2", "us6", "res0_0")) == ("us6", "res0_0", "res3_2")
