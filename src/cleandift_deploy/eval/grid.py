"""Where features are matched and how points move between original pixels and that grid.

"squash" (the DIFT / CleanDIFT references): the map covers the whole original image, so it is
upsampled straight to the original size and points need no mapping at all -- exactly DIFT's
upsample-to-image-size procedure. "pad" and "letterbox": the image covers only a content part of
the canvas (top-left, or centred for letterbox); the map is cut to the cells that touch the
content and upsampled to canvas pixels, and points map by the content/original scale, pixel
centres to pixel centres, shifted by where the content starts inside the cut.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class MatchGrid:
    """One image's feature map [C, h, w] and the pixel grid it is upsampled to."""

    features: torch.Tensor
    size: tuple[int, int]
    """(H, W) of the matching grid."""
    original: tuple[int, int]
    """(H, W) of the original image."""
    scale: tuple[float, float] | None
    """Grid pixels per original pixel (y, x), or None when the grid is the original image."""
    shift: tuple[float, float] = (0.0, 0.0)
    """Grid pixels between the cut's corner and the content's corner (y, x)."""

    def to_grid(self, points: np.ndarray) -> np.ndarray:
        """(x, y) original pixels -> grid pixels."""
        if self.scale is None:
            return points
        sy, sx = self.scale
        return (points + 0.5) * np.array([sx, sy]) - 0.5 + np.array(self.shift[::-1])

    def from_grid(self, points: np.ndarray) -> np.ndarray:
        """(x, y) grid pixels -> original pixels, kept inside the image."""
        if self.scale is None:
            return points
        sy, sx = self.scale
        back = (points - np.array(self.shift[::-1]) + 0.5) / np.array([sx, sy]) - 0.5
        return np.clip(back, 0, [self.original[1] - 1, self.original[0] - 1])


def match_grid(
    features: torch.Tensor,
    canvas: tuple[int, int],
    original: tuple[int, int],
    content: tuple[int, int],
    resize: str,
    offset: tuple[int, int] = (0, 0),
) -> MatchGrid:
    """The grid for a [C, h, w] map of an image placed on a `canvas` (H, W) by `resize`, its
    content starting `offset` (H, W) pixels into the canvas."""
    if resize == "squash":
        return MatchGrid(features, original, original, None)
    _, h, w = features.shape
    stride_y, stride_x = canvas[0] / h, canvas[1] / w
    first_y, first_x = math.floor(offset[0] / stride_y), math.floor(offset[1] / stride_x)
    last_y = min(h, math.ceil((offset[0] + content[0]) / stride_y))
    last_x = min(w, math.ceil((offset[1] + content[1]) / stride_x))
    size = (round((last_y - first_y) * stride_y), round((last_x - first_x) * stride_x))
    scale = (content[0] / original[0], content[1] / original[1])
    shift = (offset[0] - first_y * stride_y, offset[1] - first_x * stride_x)
    cut = features[:, first_y:last_y, first_x:last_x]
    return MatchGrid(cut, size, original, scale, shift)
