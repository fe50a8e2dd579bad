"""Timesteps of the two Diffusion Hyperfeatures variants and the DDIM inversion that feeds them.

Values read from diffusion-hyperfeatures/diffusion_hyperfeatures@4a5ec2b
(`archs/diffusion_extractor.py`, `archs/stable_diffusion/diffusion.py:generalized_steps`,
`configs/train.yaml`, `configs/real.yaml`):

- Scheduler: DDIM, `scaled_linear` betas 0.00085 .. 0.012 over 1000 training steps,
  `set_timesteps(N)` with the default "leading" spacing: timesteps 0, 1000/N, ..., flipped.
- Inversion step i (i = 0 .. N-1) calls the UNet at t_i = seq_next[i] where seq = [0, 20, ..., 980]
  and seq_next = [-1, 0, 20, ..., 960] (N = 50); alpha_bar(-1) := 1. The update is deterministic
  DDIM (eta 0): x0 = (x - sqrt(1-a_t) eps) / sqrt(a_t);
  x_next = sqrt(a_next) x0 + sqrt(1-a_next) eps.
- Features of call i are stored under "save_timestep" N-1-i. Multi-step (real.yaml):
  save [49, 45, 40, ..., 5, 0] -> calls i = 0, 4, 9, ..., 49 -> UNet t = -1, 60, 160, ..., 960
  (11 timesteps x 12 layers = 132 maps). One-step (train.yaml, the training default): N = 1,
  save [0] -> one call at t = -1 on the clean latent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ...errors import CleanDiftError

BETA_START = 0.00085
BETA_END = 0.012
TRAIN_TIMESTEPS = 1000


@dataclass(frozen=True)
class Variant:
    """How many DDIM inversion steps run and which of them keep their features."""

    name: str
    steps: int
    save_timestep: tuple[int, ...]
    """The reference's `save_timestep` values (generation-step numbering: N-1-i for call i)."""

    def saved_calls(self) -> tuple[int, ...]:
        """UNet call indices (0-based, in inversion order) whose features are kept."""
        return tuple(self.steps - 1 - s for s in self.save_timestep)

    def call_timesteps(self) -> tuple[float, ...]:
        """The UNet timestep of every inversion call."""
        ratio = TRAIN_TIMESTEPS // self.steps
        return tuple(-1.0 if i == 0 else float((i - 1) * ratio) for i in range(self.steps))

    def timesteps(self) -> tuple[float, ...]:
        """UNet timesteps of the kept features, in the order the aggregation network sees them."""
        calls = self.call_timesteps()
        return tuple(calls[i] for i in self.saved_calls())


ONE_STEP = Variant("one-step", 1, (0,))
MULTI_STEP = Variant("multi-step", 50, (49, 45, 40, 35, 30, 25, 20, 15, 10, 5, 0))
VARIANTS: dict[str, Variant] = {v.name: v for v in (ONE_STEP, MULTI_STEP)}


def get_variant(name: str) -> Variant:
    """The named variant, or a one-line error listing them."""
    if name not in VARIANTS:
        raise CleanDiftError(f"unknown variant {name!r}: use one of {', '.join(VARIANTS)}")
    return VARIANTS[name]


def alphas_cumprod() -> torch.Tensor:
    """alpha_bar_t for t = 0 .. 999 of the scaled-linear schedule (float32, as diffusers)."""
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, TRAIN_TIMESTEPS) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def _alpha(table: torch.Tensor, t: float) -> torch.Tensor:
    return torch.ones((), dtype=table.dtype) if t < 0 else table[int(t)]


def ddim_step(
    x: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, alpha_next: torch.Tensor
) -> torch.Tensor:
    """One deterministic DDIM move from alpha_bar `alpha` to `alpha_next`."""
    x0 = (x - eps * (1 - alpha).sqrt()) / alpha.sqrt()
    return alpha_next.sqrt() * x0 + (1 - alpha_next).sqrt() * eps


EpsFn = Callable[[torch.Tensor, float, int], torch.Tensor]
"""`(x_t, unet_timestep, call_index) -> predicted noise`; it may record features on the way."""


def ddim_invert(latent: torch.Tensor, variant: Variant, eps_fn: EpsFn) -> list[torch.Tensor]:
    """Run the variant's inversion from the clean latent; return x before every call.

    Only calls up to the last kept one run (all 50 for the multi-step variant).
    """
    table = alphas_cumprod().to(latent.device)
    calls = variant.call_timesteps()
    ratio = TRAIN_TIMESTEPS // variant.steps
    states = [latent]
    for index in range(max(variant.saved_calls()) + 1):
        t = calls[index]
        eps = eps_fn(states[-1], t, index)
        alpha, alpha_next = _alpha(table, t), table[index * ratio]
        states.append(
            ddim_step(states[-1], eps, alpha.to(latent.dtype), alpha_next.to(latent.dtype))
        )
    return states[:-1]
