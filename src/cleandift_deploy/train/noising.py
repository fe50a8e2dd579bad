"""The teacher's side of the recipe: stratified timesteps and the forward diffusion (`add_noise`).

All randomness comes from an explicit generator on the CPU, so a saved generator state replays
exactly the same timesteps and noise after a resume, whatever device the model runs on.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from ..errors import CleanDiftError

T_MIN, T_MAX = 1, 999
"""The range teacher timesteps are drawn from."""

_SD_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
}
"""Stable Diffusion 1.x/2.x training noise schedule, used when no pipeline scheduler is given."""


def noise_scheduler(root: Path | None) -> DDPMScheduler:
    """The pipeline's own scheduler config when `root/scheduler/` has one, else SD's schedule."""
    config_path = None if root is None else root / "scheduler" / "scheduler_config.json"
    if config_path is None or not config_path.is_file():
        return DDPMScheduler(**_SD_SCHEDULE)
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as err:
        raise CleanDiftError(f"cannot read {config_path} ({err}): fix or remove it") from None
    return DDPMScheduler.from_config(config)


def stratified_timesteps(
    batch: int, bins: int, generator: torch.Generator, t_min: int = T_MIN, t_max: int = T_MAX
) -> torch.Tensor:
    """`[batch, bins]` integer timesteps, one drawn uniformly inside each of `bins` equal
    sub-ranges of `[t_min, t_max)`, so every image sees low, middle and high noise."""
    width = (t_max - t_min) / bins
    offsets = torch.rand(batch, bins, generator=generator) * width
    starts = t_min + torch.arange(bins, dtype=torch.float32) * width
    return (starts + offsets).long()


def add_noise(
    scheduler: DDPMScheduler,
    clean: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
) -> torch.Tensor:
    """`x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise` with the scheduler's schedule."""
    return scheduler.add_noise(clean, noise, timesteps.to(clean.device))
