"""FreeU (Si et al. 2023) as diffusers applies it, in a form that exports to ONNX and TensorRT.

In diffusers (`apply_freeu`), before each layer of up block 0 (factors b1, s1) and up block 1
(b2, s2) the first half of the backbone's channels is multiplied by `b` and the skip tensor goes
through `fourier_filter(skip, threshold=1, scale=s)`: FFT, the 2x2 centre of the shifted spectrum
(frequencies 0 and -1 on each axis) times `s`, inverse FFT, real part. FFTs do not export (the
TorchScript exporter has no `fft_fftn`, TensorRT has no DFT layer), so `scale_lowest_frequencies`
computes the same filter with small real matrix products: those four frequencies are read with
cosine/sine bases built from the input's own height and width (dynamic sizes work).

Unlike diffusers this never writes in place, so a tap keeps the value its layer produced.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class FreeU:
    """FreeU's four factors; the defaults are GeoAware-SC's."""

    b1: float = 1.2
    b2: float = 1.4
    s1: float = 0.9
    s2: float = 0.2

    def record(self) -> dict[str, float]:
        """The manifest's `freeu` entry."""
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, float]) -> FreeU | None:
        """The factors a manifest's `freeu` entry holds (None: FreeU off)."""
        return cls(**record) if record else None

    def for_block(self, index: int) -> tuple[float, float] | None:
        """`(backbone, skip)` factors of up block `index`, or None where FreeU does nothing."""
        return {0: (self.b1, self.s1), 1: (self.b2, self.s2)}.get(index)


def _low_basis(n: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary parts `[2, n]` of the DFT rows of frequencies 0 and -1.

    For n = 1 the two frequencies coincide, so the second row is zeroed (as the FFT mask covers
    the single bin once).
    """
    positions = torch.arange(n, device=like.device).to(torch.float32)
    angle = positions * (2.0 * math.pi) / positions.shape[0]
    second = positions[-1:].clamp(max=1.0)
    real = torch.stack([torch.ones_like(angle), torch.cos(angle) * second])
    imag = torch.stack([torch.zeros_like(angle), torch.sin(angle) * second])
    return real.to(like.dtype), imag.to(like.dtype)


def scale_lowest_frequencies(x: torch.Tensor, scale: float) -> torch.Tensor:
    """diffusers' `fourier_filter(x, threshold=1, scale)` for `x [B,C,H,W]`, without FFTs.

    The filtered map is `x + (scale - 1) * low(x)`, where `low` keeps only the DFT coefficients
    at (ky, kx) in {0, -1}^2 and takes the real part of their inverse transform.
    """
    height, width = x.shape[-2], x.shape[-1]
    rows_re, rows_im = _low_basis(height, x)
    cols_re, cols_im = _low_basis(width, x)
    a_re, a_im = rows_re @ x, rows_im @ x
    x_re = a_re @ cols_re.T - a_im @ cols_im.T
    x_im = a_re @ cols_im.T + a_im @ cols_re.T
    z_re = rows_re.T @ x_re + rows_im.T @ x_im
    z_im = rows_re.T @ x_im - rows_im.T @ x_re
    low = (z_re @ cols_re + z_im @ cols_im) / (rows_re.shape[1] * cols_re.shape[1])
    return x + (scale - 1.0) * low


class FreeUStage(nn.Module):
    """`(hidden, skip) -> (hidden with its first half of channels x backbone, filtered skip)`."""

    def __init__(self, backbone: float, skip: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.skip = skip

    def forward(
        self, hidden: torch.Tensor, skip: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two inputs of an up-block layer, as FreeU changes them."""
        half = hidden.shape[1] // 2
        hidden = torch.cat([hidden[:, :half] * self.backbone, hidden[:, half:]], dim=1)
        return hidden, scale_lowest_frequencies(skip, self.skip)
