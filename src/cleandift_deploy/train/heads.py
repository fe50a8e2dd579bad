"""Projection heads: map the student's clean features towards the teacher's noisy ones at t.

One head per trained tap, all conditioned on the teacher's timestep through one shared mapping
network. Heads exist only for training: the deployed student is used without them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .layers import FourierFeatures, ResidualFeedForward, RMSNorm

MAX_TIMESTEP = 999
"""Teacher timesteps are divided by this before the Fourier features."""


@dataclass(frozen=True)
class HeadConfig:
    """Sizes of the heads and the mapping network (defaults: the CleanDIFT recipe)."""

    depth: int = 3
    expansion: float = 1.0
    mapping_width: int = 256
    mapping_hidden: int = 768
    mapping_depth: int = 2


class TimestepConditioner(nn.Module):
    """`t [N] -> cond [N, width]`: Fourier features, a linear map, then a small mapping network."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        width = config.mapping_width
        self.fourier = FourierFeatures(width)
        self.proj = nn.Linear(width, width, bias=False)
        self.in_norm = RMSNorm(width)
        self.blocks = nn.ModuleList(
            ResidualFeedForward(width, config.mapping_hidden) for _ in range(config.mapping_depth)
        )
        self.out_norm = RMSNorm(width)

    def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
        """The condition vector for each teacher timestep."""
        scaled = timesteps.to(self.proj.weight.dtype).reshape(-1, 1) / MAX_TIMESTEP
        x = self.in_norm(self.proj(self.fourier(scaled)))
        for block in self.blocks:
            x = block(x)
        return self.out_norm(x)


class ProjectionHead(nn.Module):
    """A stack of conditioned residual feed-forward blocks over `[N, C, h, w]` feature maps."""

    def __init__(self, channels: int, config: HeadConfig) -> None:
        super().__init__()
        hidden = max(1, int(channels * config.expansion))
        self.blocks = nn.ModuleList(
            ResidualFeedForward(channels, hidden, config.mapping_width) for _ in range(config.depth)
        )

    def forward(self, features: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Project each spatial position's feature vector; the output keeps the input's shape."""
        batch, channels, height, width = features.shape
        tokens = features.flatten(2).transpose(1, 2)
        for block in self.blocks:
            tokens = block(tokens, cond)
        return tokens.transpose(1, 2).reshape(batch, channels, height, width)


class ProjectionHeads(nn.Module):
    """One head per tap plus the shared timestep conditioner, initialised from `seed` alone
    (not the global random state), so runs with the same seed start identical."""

    def __init__(
        self, channels: Mapping[str, int], config: HeadConfig | None = None, seed: int = 0
    ) -> None:
        super().__init__()
        config = config or HeadConfig()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.conditioner = TimestepConditioner(config)
            self.heads = nn.ModuleDict(
                {tap: ProjectionHead(c, config) for tap, c in channels.items()}
            )

    def forward(
        self, features: Mapping[str, torch.Tensor], timesteps: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Each tap's features projected as the teacher would see them at `timesteps [N]`."""
        cond = self.conditioner(timesteps)
        return {tap: self.heads[tap](features[tap], cond) for tap in self.heads}
