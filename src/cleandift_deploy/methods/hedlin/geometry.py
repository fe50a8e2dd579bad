"""Crops, the Gaussian target and argmax read-outs on the square frame, as the reference does them.

Coordinates are (x, y) in frame pixels. Pixel (i, j) of a map sits at integer coordinates for
the Gaussian (`gaussian_circle` uses `arange(size)` grids) and the argmax reads back as the
index + 0.5 (`find_max_pixel_value(...) + 0.5`), both as in the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import CleanDiftError


def crop_start_range(position: float, side: int, size: int, margin: float) -> tuple[int, int]:
    """Inclusive range of crop starts along one axis that keep `position` at least
    `int(side * margin)` px inside the crop and the crop inside the frame (`crop_image`)."""
    inset = int(side * margin)
    low = min(max(0.0, position - side + inset), size - side)
    high = min(max(0.0, position - inset), size - side)
    return int(low), int(high)


def sample_crop(
    point: tuple[float, float],
    side: int,
    size: int,
    margin: float,
    generator: torch.Generator,
) -> tuple[int, int]:
    """A random crop start (x0, y0): x drawn first, then y, each uniform over its range."""
    starts = []
    for position in point:
        low, high = crop_start_range(position, side, size, margin)
        starts.append(int(torch.randint(low, high + 1, (1,), generator=generator)))
    return starts[0], starts[1]


def crop_resized(
    image: torch.Tensor, starts: list[tuple[int, int]], side: int, size: int
) -> torch.Tensor:
    """`image [3,S,S]` -> `[N,3,size,size]`: each crop bilinearly resized (align_corners=False)."""
    crops = torch.stack([image[:, y0 : y0 + side, x0 : x0 + side] for x0, y0 in starts])
    return F.interpolate(crops, size=(size, size), mode="bilinear", align_corners=False)


def point_in_crop(
    point: tuple[float, float], start: tuple[int, int], side: int, size: int
) -> tuple[float, float]:
    """The point in the resized crop's pixels: `(p - start) / side * size` (the reference's
    `new_pixel`, without a half-pixel shift)."""
    return (point[0] - start[0]) / side * size, (point[1] - start[1]) / side * size


def gaussian_target(centres: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """`centres [N,2]` (x, y) -> `[N,size,size]` Gaussians with peak 1 at each centre."""
    if centres.ndim != 2 or centres.shape[1] != 2:
        raise CleanDiftError(f"centres must be [N,2] (x, y); got {tuple(centres.shape)}")
    grid = torch.arange(size, dtype=centres.dtype, device=centres.device)
    dx = (grid[None, None, :] - centres[:, 0, None, None]) ** 2
    dy = (grid[None, :, None] - centres[:, 1, None, None]) ** 2
    return torch.exp(-(dx + dy) / (2 * sigma**2))


def argmax_xy(maps: torch.Tensor) -> torch.Tensor:
    """`[..., S, S]` -> `[..., 2]` (x, y) of each map's maximum, + 0.5 (pixel centre); the first
    maximum in row-major order wins ties, as `torch.argmax` on the flattened map."""
    side = maps.shape[-1]
    index = maps.flatten(-2).argmax(dim=-1)
    return torch.stack([index % side, index // side], dim=-1).to(maps.dtype) + 0.5


def corner_anchors(size: int) -> list[tuple[float, float]]:
    """The first four readout anchors: (0,0), (0,S), (S,0), (S,S) as the reference lists them
    (x, y); each pins its crop to one corner."""
    return [(0.0, 0.0), (0.0, float(size)), (float(size), 0.0), (float(size), float(size))]
