"""Diffusion Hyperfeatures parts: reference timesteps, DDIM inversion vs diffusers' schedulers,
multi-step maps vs hooks, the aggregation network and the CLIP loss against direct computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import DDIMInverseScheduler, DDIMScheduler
from model_helpers import hooked_taps

from cleandift_deploy.methods.hyperfeatures.aggregation import AggregationNetwork
from cleandift_deploy.methods.hyperfeatures.extract import ExtractSettings, UNetMaps, layer_channels
from cleandift_deploy.methods.hyperfeatures.loss import TEMPERATURE, clip_loss
from cleandift_deploy.methods.hyperfeatures.schedule import (
    MULTI_STEP,
    ONE_STEP,
    Variant,
    ddim_invert,
)
from cleandift_deploy.models.configs import SD15
from cleandift_deploy.models.taps import RESNET_TAP_NAMES

pytestmark = pytest.mark.usefixtures("single_thread")

SCHEDULE = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}


def _reference_call_timesteps(steps: int) -> list[float]:
    """The reference's `generalized_steps(run_inversion=True)`: UNet t = seq_next on a DDIM
    scheduler's flipped timesteps."""
    scheduler = DDIMScheduler(num_train_timesteps=1000, **SCHEDULE)
    scheduler.set_timesteps(steps)
    seq = torch.flip(scheduler.timesteps, dims=(0,)).tolist()
    return [-1.0] + [float(t) for t in seq[:-1]]


@pytest.mark.parametrize("variant", [ONE_STEP, MULTI_STEP])
def test_timesteps_follow_the_reference_scheduler(variant: Variant) -> None:
    calls = _reference_call_timesteps(variant.steps)
    assert list(variant.call_timesteps()) == calls
    kept = [calls[variant.steps - 1 - s] for s in variant.save_timestep]
    assert list(variant.timesteps()) == kept
    assert len(variant.timesteps()) * len(RESNET_TAP_NAMES) == (132 if variant.steps == 50 else 12)


def test_ddim_inversion_equals_diffusers_inverse_scheduler(tiny) -> None:
    latent = torch.randn(2, 4, 8, 8)
    context = torch.randn(1, 77, tiny.unet.config.cross_attention_dim).expand(2, -1, -1)
    variant = Variant("short", 10, (9, 5, 0))

    def eps(x: torch.Tensor, t: float, _index: int) -> torch.Tensor:
        with torch.no_grad():
            return tiny.unet(x, torch.full((x.shape[0],), t), context).sample

    got = ddim_invert(latent, variant, eps)
    scheduler = DDIMInverseScheduler(num_train_timesteps=1000, clip_sample=False, **SCHEDULE)
    scheduler.set_timesteps(variant.steps)
    model_t = _reference_call_timesteps(variant.steps)
    x, expected = latent, [latent]
    for index, t in enumerate(scheduler.timesteps):
        x = scheduler.step(eps(x, model_t[index], index), t, x).prev_sample
        expected.append(x)
    assert len(got) == variant.steps
    for mine, theirs in zip(got, expected[:-1], strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)
    assert (got[-1] - latent).abs().mean() > 0.1  # the inversion moved the latent


def test_multi_step_maps_equal_hooks_at_the_inverted_latents(tiny) -> None:
    variant = Variant("short", 6, (5, 2, 0))
    maps = UNetMaps(tiny, ExtractSettings(variant=variant, latent="mean"), random_init=True)
    latent = torch.randn(1, 4, 8, 8)
    got = maps.maps(latent)
    assert len(got) == 3 * len(RESNET_TAP_NAMES)
    states: list[torch.Tensor] = []

    def eps(x: torch.Tensor, t: float, _index: int) -> torch.Tensor:
        states.append(x)
        with torch.no_grad():
            return tiny.unet(x, torch.tensor([t]), maps.context).sample

    ddim_invert(latent, variant, eps)
    calls = variant.call_timesteps()
    for position, call in enumerate(variant.saved_calls()):
        expected = hooked_taps(tiny.unet, states[call], maps.context, calls[call], RESNET_TAP_NAMES)
        for layer, name in enumerate(RESNET_TAP_NAMES):
            got_map = got[position * len(RESNET_TAP_NAMES) + layer]
            torch.testing.assert_close(got_map, expected[name], atol=1e-5, rtol=0)


def test_one_step_maps_are_the_clean_latent_at_t_minus_one(tiny) -> None:
    maps = UNetMaps(tiny, ExtractSettings(latent="mean"), random_init=True)
    latent = torch.randn(2, 4, 16, 8)
    got = maps.maps(latent)
    expected = hooked_taps(tiny.unet, latent, maps.context, -1.0, RESNET_TAP_NAMES)
    for index, name in enumerate(RESNET_TAP_NAMES):
        torch.testing.assert_close(got[index], expected[name], atol=1e-5, rtol=0)


def test_layer_channels_of_sd15() -> None:
    assert layer_channels(SD15.unet) == (1280,) * 6 + (640,) * 3 + (320,) * 3


def _maps(channels: tuple[int, ...], timesteps: int, batch: int = 2) -> list[torch.Tensor]:
    sides = [2, 2, 2, 4, 4, 4, 8, 8, 8, 16, 16, 16]
    return [
        torch.randn(batch, c, sides[i % 12], sides[i % 12])
        for i, c in enumerate(channels * timesteps)
    ]


@pytest.mark.parametrize("timesteps", [1, 11])
def test_aggregation_shapes_and_softmax_mixing(timesteps: int) -> None:
    channels = (40, 40, 40, 24, 24, 24, 16, 16, 16, 8, 8, 8)
    network = AggregationNetwork(channels, timesteps).eval()
    assert network.mixing_weights.shape == (12 * timesteps,)
    with torch.no_grad():
        network.mixing_weights.normal_()
    maps = _maps(channels, timesteps)
    with torch.no_grad():
        out = network(maps)
    assert out.shape == (2, 384, 16, 16)
    weights = torch.softmax(network.mixing_weights.detach(), 0)
    expected = torch.zeros_like(out)
    with torch.no_grad():
        for k, feature in enumerate(maps):
            resized = F.interpolate(feature, size=(16, 16), mode="bilinear", align_corners=False)
            expected += weights[k] * network.bottlenecks[k % 12](resized)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    table = network.weights()
    assert table.shape == (timesteps, 12)
    torch.testing.assert_close(table.sum(), torch.tensor(1.0))
    torch.testing.assert_close(table.reshape(-1), weights)


def test_mixing_weights_and_bottlenecks_get_gradients() -> None:
    channels = (8,) * 12
    network = AggregationNetwork(channels, 2)
    network(_maps(channels, 2)).square().mean().backward()
    assert network.mixing_weights.grad is not None
    assert network.mixing_weights.grad.abs().sum() > 0
    assert all(b.conv1[0].weight.grad is not None for b in network.bottlenecks)


def _direct_clip_loss(
    source: np.ndarray, target: np.ndarray, src_pts: np.ndarray, trg_pts: np.ndarray
) -> float:
    """The loss by explicit loops over keypoints and positions (float64)."""
    c, h, w = source.shape

    def unit(m: np.ndarray) -> np.ndarray:
        flat = m.reshape(c, -1).T
        return flat / np.linalg.norm(flat, axis=1, keepdims=True)

    a, b = unit(source), unit(target)

    def index(p: np.ndarray) -> int:
        x = min(max(int(np.floor(p[0] + 0.5)), 0), w - 1)
        y = min(max(int(np.floor(p[1] + 0.5)), 0), h - 1)
        return y * w + x

    def direction(x: np.ndarray, y: np.ndarray, pts_x: np.ndarray, pts_y: np.ndarray) -> float:
        total = 0.0
        for p, q in zip(pts_x, pts_y, strict=True):
            logits = np.array([x[index(p)] @ y[j] for j in range(h * w)]) / TEMPERATURE
            total += -(
                logits[index(q)] - math.log(np.exp(logits - logits.max()).sum()) - logits.max()
            )
        return total / len(pts_x)

    return (direction(a, b, src_pts, trg_pts) + direction(b, a, trg_pts, src_pts)) / 2


def test_clip_loss_equals_a_direct_computation() -> None:
    source, target = torch.randn(16, 6, 7), torch.randn(16, 6, 7)
    src_pts = np.random.default_rng(1).uniform([0, 0], [6.4, 5.4], size=(9, 2))
    trg_pts = np.random.default_rng(2).uniform([0, 0], [6.4, 5.4], size=(9, 2))
    got = float(clip_loss(source, target, src_pts, trg_pts))
    expected = _direct_clip_loss(source.double().numpy(), target.double().numpy(), src_pts, trg_pts)
    assert got == pytest.approx(expected, rel=1e-5)
    shuffled = float(clip_loss(source, target, src_pts, trg_pts[::-1].copy()))
    assert shuffled != pytest.approx(got, rel=1e-3)
