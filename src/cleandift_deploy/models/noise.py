"""DIFT-style noisy features inside the graph: posterior draws, forward-diffusion noise, ensemble.

One VAE pass per image gives the posterior mean and std; `N` copies are drawn as
`mean + std * eps` (equal in distribution to DIFT's N encoder passes at a fraction of the cost),
noised to `x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps'` on Stable Diffusion's training schedule
(scaled-linear betas 0.00085..0.012 over 1000 steps, as diffusers' `DDIMScheduler.add_noise`), run
through the UNet as one batch of `B*N` and averaged back to `B`.

By default the draws are fixed: rows of `NOISE_WIDTH` latent cells drawn one after another from a
seeded generator, so the draws at any latent size are a slice of the draws at any larger size. An
exported graph holds them as a constant at its largest size and slices it to the input's size, so
dynamic sizes work and every backend (and the PyTorch reference) sees the same noise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..errors import CleanDiftError
from .feature_unet import is_tracing

TRAIN_STEPS = 1000
BETA_START, BETA_END = 0.00085, 0.012
LATENT_MODES = ("sample", "mean")
NOISE_WIDTH = 1024
"""Latent cells per drawn row (8192 image pixels): the widest latent fixed noise can cover."""
SCHEDULE = f"scaled_linear {BETA_START}-{BETA_END} x{TRAIN_STEPS}"


def alphas_cumprod() -> torch.Tensor:
    """`abar_t` for t = 0..999 in float32, computed as Stable Diffusion's scheduler does."""
    betas = torch.linspace(BETA_START**0.5, BETA_END**0.5, TRAIN_STEPS, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def noise_coefficients(timestep: int) -> tuple[float, float]:
    """`(sqrt(abar_t), sqrt(1 - abar_t))`: the weights of the clean latent and of the noise."""
    abar = alphas_cumprod()[timestep]
    return float(abar**0.5), float((1.0 - abar) ** 0.5)


@dataclass(frozen=True)
class NoiseSpec:
    """Noisy features: timestep, ensemble size, seed of the fixed draws, posterior sample or mean,
    and whether the graph draws fresh noise on every call instead (`random`)."""

    timestep: int
    ensemble: int = 1
    seed: int = 0
    latent: str = "sample"
    random: bool = False

    def check(self) -> None:
        """One-line errors for values that cannot work."""
        if not 0 <= self.timestep < TRAIN_STEPS:
            raise CleanDiftError(
                f"noise timestep {self.timestep} is outside 0..{TRAIN_STEPS - 1}: "
                "use DIFT's 261, sd-dino's 100 or GeoAware's 50"
            )
        if self.ensemble < 1:
            raise CleanDiftError(f"ensemble {self.ensemble} must be 1 or more")
        if self.latent not in LATENT_MODES:
            raise CleanDiftError(
                f"unknown latent mode {self.latent!r}: use one of {', '.join(LATENT_MODES)}"
            )

    def record(self) -> dict[str, Any]:
        """The manifest's `noise` entry."""
        return {**asdict(self), "schedule": SCHEDULE}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> NoiseSpec | None:
        """The spec a manifest's `noise` entry describes (None for clean features)."""
        if not record:
            return None
        fields = ("timestep", "ensemble", "seed", "latent", "random")
        return cls(**{name: record[name] for name in fields})


def fixed_draws(spec: NoiseSpec, channels: int, height: int, width: int) -> torch.Tensor:
    """`[2, N, C, h, w]`: posterior eps and diffusion noise, the same values at every size.

    Row `i` (all columns, both kinds, all copies and channels) is the i-th fixed-size draw of one
    seeded generator, so a smaller size is exactly a slice of a larger one.
    """
    if width > NOISE_WIDTH:
        raise CleanDiftError(
            f"latent width {width} exceeds fixed noise's {NOISE_WIDTH} cells: use smaller images"
        )
    generator = torch.Generator().manual_seed(spec.seed)
    rows = torch.empty(height, width, 2, spec.ensemble, channels)
    for row in rows:
        row.copy_(torch.randn(NOISE_WIDTH, 2, spec.ensemble, channels, generator=generator)[:width])
    return rows.permute(2, 3, 4, 0, 1).contiguous()


class EnsembleNoiser(nn.Module):
    """`(mean, std) [B,C,h,w] -> x_t [B*N,C,h,w]`, image-major; `average` folds `B*N` back to `B`.

    `mean` and `std` are the posterior's, already scaled to latent units. With `max_latent`
    the fixed draws are held at that size (a graph constant when traced); larger sizes, and a
    module built without it, draw them on first use.
    """

    draws: torch.Tensor

    def __init__(
        self, spec: NoiseSpec, channels: int, max_latent: tuple[int, int] | None = None
    ) -> None:
        super().__init__()
        spec.check()
        self.spec = spec
        self.channels = channels
        self.signal, self.noise = noise_coefficients(spec.timestep)
        size = max_latent if max_latent is not None and not spec.random else (0, 0)
        self.register_buffer("draws", fixed_draws(spec, channels, *size), persistent=False)

    def forward(self, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """Noised latents of every copy, copies of one image next to each other."""
        n = self.spec.ensemble
        shape = (mean.shape[0], n, *mean.shape[1:])
        mean, std = mean.unsqueeze(1), std.unsqueeze(1)
        if self.spec.random:
            posterior_eps = torch.randn_like(mean.expand(shape))
            noise_eps = torch.randn_like(posterior_eps)
        else:
            posterior_eps, noise_eps = self._fixed(mean.shape[-2], mean.shape[-1], mean)
        clean = mean + std * posterior_eps if self.spec.latent == "sample" else mean.expand(shape)
        return (self.signal * clean + self.noise * noise_eps).flatten(0, 1)

    def per_copy(self, context: torch.Tensor, batch: int) -> torch.Tensor:
        """A prompt embedding `[1|B,S,D]` repeated for every copy: `[B*N,S,D]`."""
        context = context.expand(batch, -1, -1).unsqueeze(1)
        return context.expand(-1, self.spec.ensemble, -1, -1).flatten(0, 1)

    def average(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Mean over each image's copies: `[B*N,...] -> [B,...]`."""
        n = self.spec.ensemble
        return {name: value.unflatten(0, (-1, n)).mean(dim=1) for name, value in features.items()}

    def _fixed(
        self, height: int, width: int, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        draws = self.draws
        if not is_tracing() and (height > draws.shape[-2] or width > draws.shape[-1]):
            draws = fixed_draws(self.spec, self.channels, height, width).to(like.device)
            self.draws = draws
        draws = draws[..., :height, :width].to(like.dtype)
        return draws[0], draws[1]
