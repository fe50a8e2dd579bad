"""Shared set-up for the Hedlin tests: a tiny model, small settings, and test images."""

from __future__ import annotations

import dataclasses

import numpy as np
from diffusers import AutoencoderKL

from cleandift_deploy.methods.hedlin.matcher import HedlinMatcher
from cleandift_deploy.methods.hedlin.settings import HedlinSettings
from cleandift_deploy.models import load_vae
from cleandift_deploy.models.loading import LoadedUNet
from cleandift_deploy.train.noising import noise_scheduler

SMALL = HedlinSettings(size=64, inits=2, steps=3, readout_crops=6, seed=7)
"""Frame 64 (the tiny model's size), 2 inits, 3 steps, 6 readout crops: seconds on the CPU."""


def tiny_vae() -> AutoencoderKL:
    """The tiny VAE with fixed random weights."""
    return load_vae(None, "tiny", random_init=True, seed=3)


def matcher(tiny: LoadedUNet, prune: bool = True, **changes: object) -> HedlinMatcher:
    """A matcher over the tiny model with `SMALL` settings (plus `changes`)."""
    settings = dataclasses.replace(SMALL, **changes)  # type: ignore[arg-type]
    return HedlinMatcher(tiny.unet, tiny_vae(), noise_scheduler(None), settings, prune=prune)


def photo(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth random uint8 picture (blurred noise), so crops of it are not all alike."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(height // 8 + 2, width // 8 + 2, 3))
    rows = np.linspace(0, coarse.shape[0] - 1.001, height)
    cols = np.linspace(0, coarse.shape[1] - 1.001, width)
    picture = coarse[rows.astype(int)][:, cols.astype(int)]
    return picture.clip(0, 255).astype(np.uint8)
