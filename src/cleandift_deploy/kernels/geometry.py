"""Pixel geometry: torch's bilinear (align_corners=False) sampling and cell/pixel mappings.

Conventions: a pixel coordinate is (x, y) with pixel (i, j) centred at x = j, y = i. A feature
cell c of a grid of n cells over an image axis of N pixels is centred at (c + 0.5) * N / n - 0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Axis:
    """Bilinear sampling along one axis: output index o reads ``w0*in[i0] + w1*in[i1]``."""

    i0: torch.Tensor
    i1: torch.Tensor
    w0: torch.Tensor
    w1: torch.Tensor

    def matrix(self, n_in: int) -> torch.Tensor:
        """Dense [n_out, n_in] float32 interpolation matrix (rows sum to 1)."""
        m = torch.zeros(self.i0.numel(), n_in, device=self.i0.device)
        rows = torch.arange(self.i0.numel(), device=self.i0.device)
        m.index_put_((rows, self.i0), self.w0, accumulate=True)
        m.index_put_((rows, self.i1), self.w1, accumulate=True)
        return m


def bilinear_axis(n_in: int, n_out: int, device: torch.device | str = "cpu") -> Axis:
    """Indices and weights that ``F.interpolate(mode="bilinear", align_corners=False)`` uses.

    Follows ATen's ``area_pixel_compute_source_index``: scale = n_in / n_out in float32, then
    src = scale * (o + 0.5) - 0.5 rounded once to float32 (ATen's compiled code fuses the
    multiply-add, so we compute it exactly in float64 and round), clamped below at 0;
    i0 = floor(src) capped at n_in - 1, i1 = i0 + 1 except on the last input index, w1 = src - i0.
    Where i1 == i0 (past the last input centre) the weights are set to (1, 0): the same value,
    but pixels that are exact copies of one input then get bit-identical results, so ties between
    them are real ties and resolve to the first index as in the upsampled map.
    """
    out = torch.arange(n_out, device=device)
    if n_in == n_out:
        ones = torch.ones(n_out, device=device)
        return Axis(out, out, ones, torch.zeros(n_out, device=device))
    scale = torch.tensor(n_in, dtype=torch.float32) / torch.tensor(n_out, dtype=torch.float32)
    src = (scale.double().to(device) * (out.double() + 0.5) - 0.5).float().clamp_min(0.0)
    i0 = src.floor().long().clamp_max(n_in - 1)
    w1 = (src - i0.float()).clamp(0.0, 1.0)
    i1 = i0 + (i0 < n_in - 1).long()
    w1 = torch.where(i1 == i0, 0.0, w1)
    return Axis(i0, i1, 1.0 - w1, w1)


def nearest_pixel(coord: torch.Tensor, n: int) -> torch.Tensor:
    """Index of the pixel nearest to a pixel coordinate (half-way rounds up)."""
    return torch.floor(coord.double() + 0.5).long().clamp(0, n - 1)


def pixel_to_cell(coord: torch.Tensor, n_pixels: int, n_cells: int) -> torch.Tensor:
    """Index of the feature cell whose footprint contains the pixel nearest to ``coord``."""
    centre = nearest_pixel(coord, n_pixels).double() + 0.5
    return torch.floor(centre * n_cells / n_pixels).long().clamp(0, n_cells - 1)


def cell_to_pixel(cell: torch.Tensor, n_pixels: int, n_cells: int) -> torch.Tensor:
    """Pixel coordinate of a (possibly fractional) cell index's centre."""
    return (cell.double() + 0.5) * (n_pixels / n_cells) - 0.5


def window_half_pixels(radius_cells: int, n_pixels: int, n_cells: int) -> int:
    """A window radius given in feature cells, expressed in image pixels (rounded)."""
    return math.floor(radius_cells * n_pixels / n_cells + 0.5)
