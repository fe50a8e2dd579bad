"""Hedlin et al.: attention capture, geometry, batched vs one-at-a-time optimisation, readout."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler
from hedlin_helpers import SMALL, matcher, photo, tiny_vae

from cleandift_deploy.errors import CleanDiftError
from cleandift_deploy.methods.hedlin.attention import capture_cross_attention, cross_attention
from cleandift_deploy.methods.hedlin.geometry import (
    argmax_xy,
    crop_start_range,
    gaussian_target,
    sample_crop,
)
from cleandift_deploy.methods.hedlin.model import AttentionModel, deepest_tap
from cleandift_deploy.methods.hedlin.readout import predict_points, read_out
from cleandift_deploy.methods.hedlin.settings import HedlinSettings, settings_from_strings
from cleandift_deploy.models import load_vae, random_unet
from cleandift_deploy.models.loading import LoadedUNet
from cleandift_deploy.train.noising import noise_scheduler

pytestmark = pytest.mark.usefixtures("single_thread")


def _inputs(unet: Any, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    latents = torch.randn(batch, 4, 8, 8)
    context = torch.randn(batch, 77, unet.config.cross_attention_dim)
    return latents, context


def test_captured_probabilities_equal_softmax_of_q_k_from_hooked_inputs(tiny: LoadedUNet) -> None:
    unet, layers = tiny.unet, SMALL.layers
    latents, context = _inputs(unet, 3)
    inputs: dict[int, torch.Tensor] = {}

    def keep(index: int) -> Any:
        def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            inputs[index] = args[0] if args else kwargs["hidden_states"]

        return hook

    modules = [cross_attention(unet, layer) for layer in layers]
    handles = [
        m.register_forward_pre_hook(keep(i), with_kwargs=True) for i, m in enumerate(modules)
    ]
    try:
        with torch.no_grad():
            plain = unet(latents, 140.0, context).sample
            with capture_cross_attention(unet, layers) as captured:
                hooked = unet(latents, 140.0, context).sample
    finally:
        for handle in handles:
            handle.remove()
    assert torch.equal(plain, hooked) or torch.allclose(plain, hooked, atol=1e-6)
    assert all(type(m.processor).__name__ != "CaptureProcessor" for m in modules)
    for index, (module, processor) in enumerate(zip(modules, captured, strict=True)):
        heads = module.heads
        q = module.to_q(inputs[index]).unflatten(-1, (heads, -1)).transpose(1, 2)
        k = module.to_k(context).unflatten(-1, (heads, -1)).transpose(1, 2)
        expected = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        assert processor.probs is not None
        assert processor.probs.shape == expected.shape == (3, heads, q.shape[2], 77)
        torch.testing.assert_close(processor.probs, expected, atol=1e-6, rtol=1e-5)


def test_maps_keep_heads_four_to_seven_of_token_one_and_prune_changes_nothing(
    tiny: LoadedUNet,
) -> None:
    unet, vae = tiny.unet, tiny_vae()
    latents, context = _inputs(unet, 2)
    full = AttentionModel(unet, vae, noise_scheduler(None), SMALL, prune=False)
    pruned = AttentionModel(unet, vae, noise_scheduler(None), SMALL)
    assert pruned.features is not None and pruned.features.taps == ("us7",)
    with torch.no_grad():
        maps = pruned.maps(latents, context, 140, 4)
        with capture_cross_attention(unet, SMALL.layers) as captured:
            unet(latents, 140.0, context)
        torch.testing.assert_close(maps, full.maps(latents, context, 140, 4))
    last = captured[-1].probs
    assert last is not None and last.shape[1] == 8
    expected = last[:, 4:, :, 1].mean(dim=1).reshape(2, 4, 4)
    torch.testing.assert_close(maps[:, -1], expected)
    assert not torch.allclose(expected, last[:, :4, :, 1].mean(dim=1).reshape(2, 4, 4))


def test_deepest_tap_follows_the_layers(tiny: LoadedUNet) -> None:
    assert deepest_tap(tiny.unet, [(1, 0), (1, 2)]) == "us6"
    assert deepest_tap(tiny.unet, [(2, 1)]) == "us8"
    assert deepest_tap(tiny.unet, [(3, 2)]) is None
    with pytest.raises(CleanDiftError, match="no cross-attention"):
        cross_attention(tiny.unet, (0, 0))


def test_gaussian_target_has_peak_one_and_the_reference_sigma() -> None:
    centres = torch.tensor([[10.3, 40.0], [0.0, 63.0]], dtype=torch.float64)
    maps = gaussian_target(centres, 64, 5.5)
    ys, xs = np.mgrid[0:64, 0:64]
    for centre, got in zip(centres.numpy(), maps.numpy(), strict=True):
        expected = np.exp(-((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2) / (2 * 5.5**2))
        np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert maps[1, 63, 0] == 1.0
    assert argmax_xy(maps).tolist() == [[10.5, 40.5], [0.5, 63.5]]
    assert HedlinSettings().sigma_px == pytest.approx(27.97853316316864)
    assert HedlinSettings(size=64).sigma_px == pytest.approx(27.97853316316864 / 8)


def test_crops_keep_the_point_inside_the_margin() -> None:
    settings = HedlinSettings()
    side, size = settings.crop_side, settings.size
    assert side == 477
    generator = torch.Generator().manual_seed(0)
    inset = int(side * settings.crop_margin)
    for x, y in np.random.default_rng(1).uniform(0, size, size=(200, 2)):
        x0, y0 = sample_crop((x, y), side, size, settings.crop_margin, generator)
        assert 0 <= x0 <= size - side and 0 <= y0 <= size - side
        if inset <= x <= size - inset:
            assert x0 + inset - 1 <= x <= x0 + side - inset + 1
    assert crop_start_range(0.0, side, size, 0.15) == (0, 0)
    assert crop_start_range(float(size), side, size, 0.15) == (size - side, size - side)


def test_timesteps_are_the_reference_ddim_indices() -> None:
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
    )
    scheduler.set_timesteps(50)
    assert int(scheduler.timesteps[-8]) == HedlinSettings().optimise_timestep == 140
    assert int(scheduler.timesteps[-3]) == HedlinSettings().readout_timestep == 40


def test_batched_optimisation_equals_the_one_at_a_time_loop(tiny: LoadedUNet) -> None:
    source, target = photo(80, 96, 1), photo(72, 64, 2)
    points = np.array([[12.0, 20.0], [50.0, 61.0], [90.0, 5.0]])
    batched = matcher(tiny).match(source, target, points, stream=5)
    looped = matcher(tiny, prune=False, batch=1).match(source, target, points, stream=5)
    np.testing.assert_array_equal(batched.points, looped.points)
    torch.testing.assert_close(batched.optimised.losses, looped.optimised.losses, rtol=1e-4, atol=0)
    torch.testing.assert_close(
        batched.optimised.embeddings, looped.optimised.embeddings, rtol=1e-4, atol=1e-5
    )
    assert batched.points.shape == (3, 2)
    assert (batched.points >= 0).all() and (batched.points <= [64, 72]).all()
    other = matcher(tiny, seed=8).match(source, target, points, stream=5)
    assert not torch.equal(other.optimised.losses, batched.optimised.losses)


def test_the_loss_falls_over_steps(tiny: LoadedUNet) -> None:
    source = photo(64, 64, 3)
    result = matcher(tiny, steps=12, inits=1, lr=0.5).match(source, source, [[20.0, 30.0]])
    losses = result.optimised.losses[0, 0]
    assert losses[-4:].mean() < 0.98 * losses[:4].mean()


def test_early_stop_ends_still_embeddings_and_is_off_by_default(tiny: LoadedUNet) -> None:
    source, points = photo(64, 64, 4), np.array([[20.0, 30.0], [40.0, 10.0]])
    stopped = matcher(tiny, steps=5, early_stop=1, early_stop_px=1e9).match(source, source, points)
    assert stopped.optimised.steps_run.tolist() == [[2, 2], [2, 2]]
    assert torch.isnan(stopped.optimised.losses[..., 2:]).all()
    full = matcher(tiny, steps=5).match(source, source, points)
    assert (full.optimised.steps_run == 5).all()


class _WindowModel:
    """Stands in for AttentionModel: its "latents" carry each crop's start, and its maps are
    the window of a fixed per-embedding map, so pasting must rebuild that map exactly."""

    def __init__(self, settings: HedlinSettings, truth: torch.Tensor) -> None:
        self.settings, self.truth, self.dtype = settings, truth, torch.float64

    def encode(self, crops: torch.Tensor) -> torch.Tensor:
        return (crops[:, :2, :1, :1] * self.settings.size).round().double()

    def noisy(self, latents: torch.Tensor, noise: torch.Tensor, timestep: int) -> torch.Tensor:
        return latents

    def maps(self, latents: torch.Tensor, contexts: torch.Tensor, timestep: int, out: int) -> Any:
        windows = []
        for start, which in zip(latents[:, :, 0, 0].long(), contexts[:, 0, 0].long(), strict=True):
            x0, y0 = start.tolist()
            windows.append(self.truth[which, :, y0 : y0 + out, x0 : x0 + out])
        return torch.stack(windows)


def test_readout_pastes_windows_back_and_recovers_the_peak() -> None:
    settings = HedlinSettings(size=64, inits=2, readout_crops=7, layers=((1, 0), (2, 0)))
    peaks = torch.tensor([[10.0, 50.0], [41.0, 7.0], [33.0, 33.0]], dtype=torch.float64)
    bumps = gaussian_target(peaks, 64, 4.0)
    truth = bumps[:, None].repeat(1, 2, 1, 1) + 0.05 * torch.rand(3, 2, 64, 64)
    coordinates = torch.arange(64, dtype=torch.float64) / 64
    image = torch.stack([coordinates.expand(64, 64), coordinates[:, None].expand(64, 64)] * 2)[:3]
    embeddings = torch.arange(3, dtype=torch.float64)[:, None, None, None].expand(3, 2, 77, 4)
    model: Any = _WindowModel(settings, truth)
    maps = read_out(model, image, embeddings)
    torch.testing.assert_close(maps, truth[:, None].expand(3, 2, 2, 64, 64))
    assert predict_points(maps).tolist() == (peaks + 0.5).tolist()


def test_settings_from_strings_parse_and_refuse() -> None:
    settings = settings_from_strings({"steps": "7", "lr": "0.1", "layers": "1.0,2.0"})
    assert (settings.steps, settings.lr, settings.layers) == (7, 0.1, ((1, 0), (2, 0)))
    with pytest.raises(CleanDiftError, match="unknown hedlin setting"):
        settings_from_strings({"stepz": "1"})
    with pytest.raises(CleanDiftError, match="needs a int"):
        settings_from_strings({"steps": "many"})
    with pytest.raises(CleanDiftError, match="noise must be"):
        settings_from_strings({"noise": "pink"})


@pytest.mark.slow
def test_sd15_layers_capture_and_pruning() -> None:
    """On the real SD1.5 architecture: the four layers sit at 1/16 and 1/8 of the latent, keep
    heads 4-7 of 8, equal the recomputed softmax, and pruning after us7 changes nothing."""
    unet = random_unet("sd15", seed=0).unet
    vae = load_vae(None, "sd15", random_init=True)
    settings = HedlinSettings(size=128)
    latents, context = torch.randn(1, 4, 16, 16), torch.randn(1, 77, 768)
    pruned = AttentionModel(unet, vae, noise_scheduler(None), settings)
    full = AttentionModel(unet, vae, noise_scheduler(None), settings, prune=False)
    with torch.no_grad():
        maps = pruned.maps(latents, context, 140, 8)
        torch.testing.assert_close(maps, full.maps(latents, context, 140, 8))
        with capture_cross_attention(unet, settings.layers) as captured:
            unet(latents, 140.0, context)
    sides = []
    for processor, layer_map in zip(captured, maps[0], strict=True):
        probs = processor.probs
        assert probs is not None and probs.shape[1] == 8
        side = math.isqrt(probs.shape[2])
        sides.append(side)
        small = probs[:, 4:, :, 1].mean(dim=1).reshape(1, 1, side, side)
        expected = torch.nn.functional.interpolate(small, size=(8, 8), mode="bilinear")
        torch.testing.assert_close(layer_map, expected[0, 0])
    assert sides == [4, 4, 4, 8]
