"""Building blocks of the projection heads and the timestep mapping network.

Structure follows the CleanDIFT recipe: RMS normalisation (optionally scaled by a condition),
a SwiGLU up projection and a zero-initialised down projection added back onto the input, so every
block starts as the identity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def rms_norm(x: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
    """Normalise the last dimension to unit root-mean-square (in fp32 at least), then scale."""
    dtype = torch.promote_types(torch.promote_types(x.dtype, scale.dtype), torch.float32)
    mean_square = x.to(dtype).pow(2).mean(dim=-1, keepdim=True)
    return x * (scale.to(dtype) * torch.rsqrt(mean_square + eps)).to(x.dtype)


class RMSNorm(nn.Module):
    """RMS normalisation with a learned per-feature scale (initially 1)."""

    def __init__(self, features: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x [..., features]` normalised and scaled."""
        return rms_norm(x, self.scale, self.eps)


class AdaRMSNorm(nn.Module):
    """RMS normalisation whose scale is `1 + linear(cond)`; the linear starts at zero."""

    def __init__(self, features: int, cond_features: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.linear = nn.Linear(cond_features, features, bias=False)
        nn.init.zeros_(self.linear.weight)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """`x [N, L, features]` normalised with a scale from `cond [N, cond_features]`."""
        return rms_norm(x, self.linear(cond)[:, None, :] + 1, self.eps)


class SwiGLU(nn.Module):
    """A linear map to twice the width, halves combined as `value * silu(gate)`."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_features, 2 * out_features, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x [..., in] -> [..., out]`."""
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.silu(gate)


class ResidualFeedForward(nn.Module):
    """`x + down(swiglu(norm(x)))` with a zero-initialised `down`: the identity at start.

    With `cond_features` the norm is an AdaRMSNorm conditioned on a vector, else a plain RMSNorm.
    """

    def __init__(self, features: int, hidden: int, cond_features: int | None = None) -> None:
        super().__init__()
        self.norm: nn.Module = (
            RMSNorm(features) if cond_features is None else AdaRMSNorm(features, cond_features)
        )
        self.up = SwiGLU(features, hidden)
        self.down = nn.Linear(hidden, features, bias=False)
        nn.init.zeros_(self.down.weight)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """One residual block; `cond` is required exactly when the block is conditioned."""
        normed = self.norm(x) if cond is None else self.norm(x, cond)
        return x + self.down(self.up(normed))


class FourierFeatures(nn.Module):
    """Random Fourier features of a scalar: `[cos(2 pi x w), sin(2 pi x w)]`, w ~ N(0, 1) fixed.

    `w` is a buffer, saved with the training state so a resumed run sees the same features.
    """

    weight: torch.Tensor

    def __init__(self, out_features: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.randn(out_features // 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """`x [N, 1] -> [N, out_features]`."""
        angles = 2 * math.pi * x @ self.weight.T
        return torch.cat([angles.cos(), angles.sin()], dim=-1)
