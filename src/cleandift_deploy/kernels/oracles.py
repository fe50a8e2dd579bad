"""Plain-torch oracles: the procedures the fast paths must reproduce.

Dense: normalise, full similarity matrix, argmax / top-k. Query points: bilinearly upsample both
feature maps to image size (as DIFT and the CleanDIFT notebook do), normalise every pixel, take the
source pixel's vector and a hard argmax over every target pixel. These materialise everything on
purpose; they are the baselines in the benchmark and the ground truth in the tests.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .cosine import EPS, normalize_rows
from .geometry import cell_to_pixel, nearest_pixel, pixel_to_cell, window_half_pixels
from .types import MutualMatches, NearestNeighbours, PointMatches, mutual_from_argmax


def reference_match_dense(
    a: torch.Tensor, b: torch.Tensor, *, mutual: bool = False, k: int = 1
) -> NearestNeighbours | MutualMatches:
    """Cosine nearest neighbours through the full [N, M] similarity matrix."""
    sim = normalize_rows(a) @ normalize_rows(b).T
    if mutual:
        row_val, row_idx = sim.max(dim=1)
        return mutual_from_argmax(row_idx, row_val, sim.argmax(dim=0))
    if k == 1:
        val, idx = sim.max(dim=1)
        return NearestNeighbours(idx[:, None], val[:, None])
    val, idx = sim.topk(k, dim=1)
    return NearestNeighbours(idx, val)


def _pixel_grid(feat: torch.Tensor, size: tuple[int, int], upsample: str) -> torch.Tensor:
    """[H*W, C] unit vectors of the (optionally upsampled) feature map."""
    x = feat.float()[None]
    if upsample == "bilinear":
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    x = F.normalize(x[0], dim=0, eps=EPS)
    return x.flatten(1).T


def reference_match_points(
    src: torch.Tensor,
    tgt: torch.Tensor,
    points: torch.Tensor,
    src_size: tuple[int, int],
    tgt_size: tuple[int, int],
    *,
    upsample: str = "bilinear",
    mode: str = "nn",
    radius: int = 5,
    beta: float = 0.02,
    chunk: int = 64,
) -> PointMatches:
    """Upsample-then-match (``upsample="bilinear"``) or coarse-grid matching (``"none"``).

    Window soft-argmax: softmax(score / beta) over the grid positions within ``radius`` cells of
    the hard argmax (in pixels for the upsampled grid), expected (x, y) of that distribution.
    """
    (sh, sw), (th, tw) = src_size, tgt_size
    h2, w2 = tgt.shape[1:]
    fine = upsample == "bilinear"
    gh, gw = (th, tw) if fine else (h2, w2)
    src_grid = _pixel_grid(src, src_size, upsample)
    tgt_grid = _pixel_grid(tgt, tgt_size, upsample)
    if fine:
        sy, sx = nearest_pixel(points[:, 1], sh), nearest_pixel(points[:, 0], sw)
        src_w = sw
    else:
        sy, sx = (
            pixel_to_cell(points[:, 1], sh, src.shape[1]),
            pixel_to_cell(points[:, 0], sw, src.shape[2]),
        )
        src_w = src.shape[2]
    queries = src_grid[(sy * src_w + sx).to(src_grid.device)]
    ry = window_half_pixels(radius, th, h2) if fine else radius
    rx = window_half_pixels(radius, tw, w2) if fine else radius
    out_xy, out_s = [], []
    ys = torch.arange(gh, device=tgt_grid.device, dtype=torch.float64)[:, None].expand(gh, gw)
    xs = torch.arange(gw, device=tgt_grid.device, dtype=torch.float64)[None, :].expand(gh, gw)
    for q in queries.split(chunk):
        sim = q @ tgt_grid.T
        best, idx = sim.max(dim=1)
        by, bx = (idx // gw).double(), (idx % gw).double()
        if mode == "nn":
            fy, fx = by, bx
        else:
            inside = ((ys.flatten()[None] - by[:, None]).abs() <= ry) & (
                (xs.flatten()[None] - bx[:, None]).abs() <= rx
            )
            logits = torch.where(inside, (sim - best[:, None]).double() / beta, -torch.inf)
            p = logits.softmax(dim=1)
            fy, fx = p @ ys.flatten(), p @ xs.flatten()
        out_xy.append(torch.stack([fx, fy], dim=1))
        out_s.append(best)
    xy = torch.cat(out_xy)
    if not fine:
        xy = torch.stack([cell_to_pixel(xy[:, 0], tw, w2), cell_to_pixel(xy[:, 1], th, h2)], dim=1)
    return PointMatches(xy.float(), torch.cat(out_s).float())
