"""Matching between two served images in their original pixels: query points, heatmaps, top-N.

A squashed image's feature map covers the whole original image, so everything runs directly at
the original sizes (`match_points` upsamples both maps to them, as DIFT does). A padded or
letterboxed image covers only part of the canvas: points are scaled onto the canvas, matched
there, and scaled back, with matches that fall into the padding clamped to the image. `Frame`
holds that mapping; the math is the toolkit's kernels (`match_points`, `match_dense`, and the
exact-upsampled matcher's prepared target for repeated queries against one image).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..kernels import match_dense, match_points
from ..kernels._checks import check_points
from ..kernels.geometry import cell_to_pixel
from ..kernels.query import match_prepared, score_map, source_vectors
from ..kernels.target_field import TargetField, prepare_target
from ..kernels.types import MutualMatches
from ..runtime.preprocess import Placement

Side = tuple[torch.Tensor, Placement, tuple[int, int]]
"""One image: its feature map [C, h, w], where it sits on the canvas, and the canvas size."""


@dataclass(frozen=True)
class Frame:
    """Where matching runs for one image: its original pixels when the map covers exactly the
    image (squash), else the model's canvas, with the map between original and grid pixels."""

    original: tuple[int, int]
    grid: tuple[int, int]
    scale: tuple[float, float]
    """Grid pixels per original pixel along x and y."""
    offset: tuple[float, float]
    """Grid (x, y) of the content's top-left corner."""

    @property
    def direct(self) -> bool:
        """Whether the grid is the original image itself."""
        return self.grid == self.original

    def to_grid(self, xy: torch.Tensor) -> torch.Tensor:
        """Original (x, y) pixels -> grid pixels."""
        if self.direct:
            return xy
        return (xy + 0.5) * torch.tensor(self.scale) - 0.5 + torch.tensor(self.offset)

    def to_original(self, xy: torch.Tensor) -> torch.Tensor:
        """Grid pixels -> original (x, y) pixels, clamped to the image."""
        if self.direct:
            return xy
        back = (xy - torch.tensor(self.offset) + 0.5) / torch.tensor(self.scale) - 0.5
        height, width = self.original
        return torch.stack([back[:, 0].clamp(0, width - 1), back[:, 1].clamp(0, height - 1)], 1)

    def inside(self, xy: torch.Tensor) -> torch.Tensor:
        """[K] whether grid pixels lie on the image's content (not in the padding)."""
        if self.direct:
            return torch.ones(len(xy), dtype=torch.bool)
        (ox, oy), (sx, sy) = self.offset, self.scale
        height, width = self.original
        x, y = xy[:, 0] - ox, xy[:, 1] - oy
        return (x >= -0.5) & (x < width * sx - 0.5) & (y >= -0.5) & (y < height * sy - 0.5)


def frame_of(placement: Placement, canvas: tuple[int, int]) -> Frame:
    """The matching frame of an image placed on a canvas."""
    original = tuple(placement.original)
    if tuple(placement.content) == tuple(canvas) and tuple(placement.offset) == (0, 0):
        return Frame((original[0], original[1]), (original[0], original[1]), (1.0, 1.0), (0, 0))
    scale = (
        placement.content[1] / placement.original[1],
        placement.content[0] / placement.original[0],
    )
    offset = (float(placement.offset[1]), float(placement.offset[0]))
    return Frame((original[0], original[1]), (canvas[0], canvas[1]), scale, offset)


def match_in_pixels(
    source: Side, target: Side, points: list[tuple[float, float]], mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) source pixels -> ([K, 2] matched target pixels, [K] cosine scores)."""
    (src, src_place, src_canvas), (tgt, tgt_place, tgt_canvas) = source, target
    src_frame, tgt_frame = frame_of(src_place, src_canvas), frame_of(tgt_place, tgt_canvas)
    query = torch.tensor(points, dtype=torch.float32)
    check_points(query, src_place.original)
    found = match_points(
        src, tgt, src_frame.to_grid(query), src_frame.grid, tgt_frame.grid, mode=mode
    )
    return tgt_frame.to_original(found.points), found.scores


def prepared_target(target: Side) -> TargetField:
    """The target prepared once for repeated single-point queries (cache it per image and tap)."""
    tgt, placement, canvas = target
    return prepare_target(tgt, frame_of(placement, canvas).grid, "bilinear")


def query_vector(source: Side, point: tuple[float, float]) -> torch.Tensor:
    """[1, C] unit vector of the source pixel nearest `point` (original pixels), upsampled."""
    src, placement, canvas = source
    frame = frame_of(placement, canvas)
    query = torch.tensor([point], dtype=torch.float32)
    check_points(query, placement.original)
    return source_vectors(src, frame.to_grid(query), frame.grid, "bilinear")


def best_match(
    query: torch.Tensor, field: TargetField, target: Side
) -> tuple[tuple[float, float], float]:
    """The query's hard-argmax match in original target pixels and its cosine: the same answer
    as `match_in_pixels` (mode "nn"), from a target prepared once."""
    frame = frame_of(target[1], target[2])
    found = match_prepared(field, query, frame.grid, mode="nn", radius=5, beta=0.02)
    x, y = frame.to_original(found.points)[0].tolist()
    return (x, y), float(found.scores[0])


def heatmap(
    query: torch.Tensor, field: TargetField, target: Side, size: tuple[int, int]
) -> torch.Tensor:
    """[H, W] cosine similarity of the query with every pixel of the target, drawn at `size`.

    The map is DIFT's: the target's features upsampled bilinearly to the original image (on a
    padded canvas: its content's part), normalised per pixel, dotted with the query; computed
    from the prepared target (`score_map`), then resized to `size` for display (area-weighted
    when shrinking, so a small drawing keeps the peaks' average, not an aliased sample)."""
    frame = frame_of(target[1], target[2])
    values = score_map(field, query[0])
    if not frame.direct:
        (ox, oy), (sx, sy) = frame.offset, frame.scale
        height, width = frame.original
        top, left = round(oy), round(ox)
        values = values[top : top + round(height * sy), left : left + round(width * sx)]
    if tuple(values.shape) == tuple(size):
        return values
    shrink = size[0] < values.shape[0] and size[1] < values.shape[1]
    resized = F.interpolate(
        values[None, None], size=size, mode="bilinear", align_corners=False, antialias=shrink
    )
    return resized[0, 0]


def _cell_pixels(side: Side) -> torch.Tensor:
    """[h*w, 2] grid (x, y) pixels of every feature cell's centre, row-major."""
    feat, placement, canvas = side
    _, h, w = feat.shape
    grid_h, grid_w = frame_of(placement, canvas).grid
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack(
        [cell_to_pixel(xs.flatten(), grid_w, w), cell_to_pixel(ys.flatten(), grid_h, h)], 1
    ).float()


@dataclass(frozen=True)
class DenseMatches:
    """Cell-to-cell matches in original pixels, best first: [P, 2] source and target points."""

    source: torch.Tensor
    target: torch.Tensor
    scores: torch.Tensor


def top_matches(
    source: Side, target: Side, count: int, mutual: bool, min_score: float
) -> DenseMatches:
    """The `count` best nearest-neighbour (or mutual nearest-neighbour) cell pairs between the
    two feature maps (`match_dense`), as cell centres in original pixels; cells in padding are
    left out, and so are pairs scoring below `min_score`."""
    src, tgt = source[0], target[0]
    a = src.float().flatten(1).T.contiguous()
    b = tgt.float().flatten(1).T.contiguous()
    found = match_dense(a, b, mutual=mutual)
    if isinstance(found, MutualMatches):
        rows, cols, scores = found.pairs[:, 0], found.pairs[:, 1], found.scores
    else:
        rows, cols, scores = torch.arange(len(a)), found.indices[:, 0], found.scores[:, 0]
    src_xy, tgt_xy = _cell_pixels(source)[rows], _cell_pixels(target)[cols]
    src_frame, tgt_frame = frame_of(source[1], source[2]), frame_of(target[1], target[2])
    keep = src_frame.inside(src_xy) & tgt_frame.inside(tgt_xy) & (scores >= min_score)
    order = scores[keep].argsort(descending=True, stable=True)[:count]
    return DenseMatches(
        src_frame.to_original(src_xy[keep][order]),
        tgt_frame.to_original(tgt_xy[keep][order]),
        scores[keep][order],
    )
