"""Matching query points between two served images in their original pixels.

A squashed image's feature map covers the whole original image, so points match directly at the
original sizes (`match_points` upsamples both maps to them, as DIFT does). A padded image covers
only the top-left `content` part of the canvas: points are scaled onto the canvas, matched there,
and scaled back, with matches that fall into the padding clamped to the image.
"""

from __future__ import annotations

import torch

from ..kernels import match_points
from ..kernels._checks import check_points
from ..runtime.preprocess import Placement

Side = tuple[torch.Tensor, Placement, tuple[int, int]]
"""One image: its feature map [C, h, w], where it sits on the canvas, and the canvas size."""


def _scale(placement: Placement) -> tuple[float, float]:
    """Canvas pixels per original pixel along x and y."""
    return (
        placement.content[1] / placement.original[1],
        placement.content[0] / placement.original[0],
    )


def _covers_canvas(placement: Placement, canvas: tuple[int, int]) -> bool:
    return tuple(placement.content) == tuple(canvas)


def match_in_pixels(
    source: Side, target: Side, points: list[tuple[float, float]], mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) source pixels -> ([K, 2] matched target pixels, [K] cosine scores)."""
    (src, src_place, src_canvas), (tgt, tgt_place, tgt_canvas) = source, target
    query = torch.tensor(points, dtype=torch.float32)
    check_points(query, src_place.original)
    if _covers_canvas(src_place, src_canvas) and _covers_canvas(tgt_place, tgt_canvas):
        found = match_points(src, tgt, query, src_place.original, tgt_place.original, mode=mode)
        return found.points, found.scores
    sx, sy = _scale(src_place)
    on_canvas = (query + 0.5) * torch.tensor([sx, sy]) - 0.5
    found = match_points(src, tgt, on_canvas, src_canvas, tgt_canvas, mode=mode)
    tx, ty = _scale(tgt_place)
    back = (found.points + 0.5) / torch.tensor([tx, ty]) - 0.5
    height, width = tgt_place.original
    back[:, 0].clamp_(0, width - 1)
    back[:, 1].clamp_(0, height - 1)
    return back, found.scores
