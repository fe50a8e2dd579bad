"""Exact-upsampled query-point matching without building an upsampled feature map.

For a unit query q and an upsampled target pixel u = sum_i w_i t_i, the numerator q.u is the same
bilinear mix of the coarse dot-product map D = q.T, and |u| comes from ``target_field``.

The hard argmax over every target pixel is found by branch and bound over small tiles that never
straddle two interpolation cells. A tile's best score is bounded twice: (1) the numerator is
bilinear in the pixel position, so it peaks at a tile corner, and the tile's largest inverse norm
finishes the bound; (2) by Cauchy-Schwarz in the metric of the corners' Gram matrix G, no
combination of the corners has cosine above sqrt(d^T G^-1 d), d the corners' dot products. The
corner pixels give a lower bound, and only tiles whose bound reaches it are evaluated exactly.
Ties go to the first pixel in row-major order, like ``torch.argmax``.
"""

from __future__ import annotations

import torch

from .cosine import normalize_rows
from .geometry import (
    bilinear_axis,
    cell_to_pixel,
    nearest_pixel,
    pixel_to_cell,
    window_half_pixels,
)
from .target_field import TargetField, prepare_target, quadratic_form
from .types import PointMatches

QUERY_CHUNK = 64
BOUND_SLACK = 1e-5
NO_INDEX = 2**62


def source_vectors(
    src: torch.Tensor, points: torch.Tensor, size: tuple[int, int], upsample: str
) -> torch.Tensor:
    """[K, C] unit query vectors: the upsampled source pixel nearest to each point, or its cell."""
    c, h, w = src.shape
    rows = src.reshape(c, h * w).T.contiguous()
    if upsample == "none":
        cy = pixel_to_cell(points[:, 1], size[0], h).to(src.device)
        cx = pixel_to_cell(points[:, 0], size[1], w).to(src.device)
        return normalize_rows(rows[cy * w + cx])
    py = nearest_pixel(points[:, 1], size[0]).to(src.device)
    px = nearest_pixel(points[:, 0], size[1]).to(src.device)
    ay, ax = bilinear_axis(h, size[0], src.device), bilinear_axis(w, size[1], src.device)
    vec = torch.zeros(len(py), c, device=src.device)
    for iy, wy in ((ay.i0[py], ay.w0[py]), (ay.i1[py], ay.w1[py])):
        for ix, wx in ((ax.i0[px], ax.w0[px]), (ax.i1[px], ax.w1[px])):
            vec += (wy * wx)[:, None] * rows[iy * w + ix].float()
    return normalize_rows(vec)


def scores_at(
    field: TargetField, dots: torch.Tensor, q: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor
) -> torch.Tensor:
    """Exact cosine of query ``q`` with grid pixel (ys, xs); all index tensors broadcast.

    ``dots`` is the [Kc, h*w] coarse dot-product map of the current query chunk.
    """
    width = field.cells[1]
    flat = dots.flatten()
    base = q * dots.shape[1]
    y0, y1 = base + field.ay.i0[ys] * width, base + field.ay.i1[ys] * width
    x0, x1 = field.ax.i0[xs], field.ax.i1[xs]
    wx0, wx1 = field.ax.w0[xs], field.ax.w1[xs]
    top = wx0 * flat[y0 + x0] + wx1 * flat[y0 + x1]
    bottom = wx0 * flat[y1 + x0] + wx1 * flat[y1 + x1]
    num = field.ay.w0[ys] * top + field.ay.w1[ys] * bottom
    return num * field.inv_norm[ys, xs]


def score_map(field: TargetField, query: torch.Tensor) -> torch.Tensor:
    """[H, W] cosine of one unit query vector [C] with every pixel of the prepared target's grid:
    the similarity heatmap of upsample-then-normalise (DIFT's picture), built from the coarse
    dot-product map with the same interpolation and norms the matcher uses."""
    (h, w) = field.cells
    dots = (query.float() @ field.feat).view(h, w)
    return field.ay.matrix(h) @ dots @ field.ax.matrix(w).T * field.inv_norm


def _projection_bound(field: TargetField, dots: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """sqrt(d^T G^-1 d) for candidate (query, tile row, tile column) rows: no pixel of the tile's
    neighbourhood has a higher cosine (infinite where G is too ill-conditioned to trust)."""
    assert field.bounds is not None
    b = field.bounds
    h, w = field.cells
    ry = field.ay.i0[b.tiles_y.first[cand[:, 1]]]
    rx = field.ax.i0[b.tiles_x.first[cand[:, 2]]]
    ry1, rx1 = (ry + 1).clamp_max(h - 1), (rx + 1).clamp_max(w - 1)
    base = cand[:, 0] * (h * w)
    flat = dots.flatten()
    corner_cells = (ry * w + rx, ry * w + rx1, ry1 * w + rx, ry1 * w + rx1)
    mask = b.corner_mask[ry, rx]
    d = [flat[base + cell].double() * mask[:, i] for i, cell in enumerate(corner_cells)]
    quad = quadratic_form(b.gram_inv[ry, rx], d)
    return torch.where(b.gram_ok[ry, rx], quad.clamp_min(0).sqrt(), torch.inf)


def _bound_candidates(field: TargetField, dots: torch.Tensor) -> torch.Tensor:
    """[P, 3] (query, tile row, tile column) of tiles that may hold a query's best pixel.

    First the corner bound prunes most tiles; the projection bound then prunes the survivors.
    """
    assert field.bounds is not None
    b = field.bounds
    corner = b.corner_wy @ dots.view(-1, *field.cells) @ b.corner_wx.T
    lower = (corner * b.corner_inv).flatten(1).amax(dim=1) - BOUND_SLACK
    top = torch.maximum(corner[:, 0::2], corner[:, 1::2])
    top = torch.maximum(top[:, :, 0::2], top[:, :, 1::2])
    upper = torch.where(top >= 0, top * b.inv_hi, top * b.inv_lo)
    cand = (upper >= lower[:, None, None]).nonzero()
    keep = _projection_bound(field, dots, cand) + BOUND_SLACK >= lower[cand[:, 0]]
    return cand[keep]


def _fine_argmax(field: TargetField, dots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact hard argmax over every upsampled target pixel, by branch and bound."""
    assert field.bounds is not None
    cand = _bound_candidates(field, dots)
    q = cand[:, 0, None, None]
    ys = field.bounds.tiles_y.index[cand[:, 1]][:, :, None]
    xs = field.bounds.tiles_x.index[cand[:, 2]][:, None, :]
    s = scores_at(field, dots, q, ys, xs).flatten(1)
    flat = (ys * field.shape[1] + xs).flatten(1)
    n = dots.shape[0]
    best = torch.full((n,), -torch.inf, device=dots.device)
    best = best.scatter_reduce(0, cand[:, 0], s.amax(dim=1), "amax")
    first = torch.where(s == best[cand[:, 0], None], flat, NO_INDEX).amin(dim=1)
    idx = torch.full((n,), NO_INDEX, device=dots.device, dtype=torch.long)
    return best, idx.scatter_reduce(0, cand[:, 0], first, "amin")


def _argmax(field: TargetField, dots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Best score and its flat grid index for each query of the chunk."""
    if field.bounds is None:
        return (dots * field.inv_norm.flatten()).max(dim=1)
    return _fine_argmax(field, dots)


def _window_softargmax(
    field: TargetField,
    dots: torch.Tensor,
    best: torch.Tensor,
    idx: torch.Tensor,
    radius: tuple[int, int],
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected (y, x) grid position under softmax(score / beta) in a window around the argmax.

    The window's numerators are one batched product: rows of the interpolation matrices
    (identity on the coarse grid) around the argmax, times the coarse dot-product map.
    """
    (h, w), (gh, gw) = field.cells, field.shape
    dev = dots.device
    ys = (idx // gw)[:, None] + torch.arange(-radius[0], radius[0] + 1, device=dev)
    xs = (idx % gw)[:, None] + torch.arange(-radius[1], radius[1] + 1, device=dev)
    inside = ((ys >= 0) & (ys < gh))[:, :, None] & ((xs >= 0) & (xs < gw))[:, None, :]
    ys, xs = ys.clamp(0, gh - 1), xs.clamp(0, gw - 1)
    wy, wx = field.ay.matrix(h)[ys], field.ax.matrix(w)[xs]
    s = wy @ dots.view(-1, h, w) @ wx.transpose(1, 2)
    s = s * field.inv_norm[ys[:, :, None], xs[:, None, :]]
    logits = torch.where(inside, (s - best[:, None, None]).double() / beta, -torch.inf)
    p = logits.flatten(1).softmax(dim=1).view_as(logits)
    return (p.sum(2) * ys).sum(1), (p.sum(1) * xs).sum(1)


def _window_radius(field: TargetField, radius: int) -> tuple[int, int]:
    """The window radius on the matching grid: ``radius`` cells, in pixels when upsampled."""
    if field.bounds is None:
        return radius, radius
    (h, w), (gh, gw) = field.cells, field.shape
    return window_half_pixels(radius, gh, h), window_half_pixels(radius, gw, w)


def match_query_points(
    src: torch.Tensor,
    tgt: torch.Tensor,
    points: torch.Tensor,
    src_size: tuple[int, int],
    tgt_size: tuple[int, int],
    *,
    upsample: str,
    mode: str,
    radius: int,
    beta: float,
) -> PointMatches:
    """Match source points into the target; see ``cleandift_deploy.kernels.match_points``."""
    field = prepare_target(tgt, tgt_size, upsample)
    queries = source_vectors(src, points, src_size, upsample)
    return match_prepared(field, queries, tgt_size, mode=mode, radius=radius, beta=beta)


def match_prepared(
    field: TargetField,
    queries: torch.Tensor,
    tgt_size: tuple[int, int],
    *,
    mode: str,
    radius: int,
    beta: float,
) -> PointMatches:
    """Match unit query vectors [K, C] (``source_vectors``) into a target prepared once by
    ``prepare_target``: an evaluation reuses one field for every pair sharing that target."""
    out_xy, out_s = [], []
    for chunk in queries.split(QUERY_CHUNK):
        dots = chunk @ field.feat
        best, idx = _argmax(field, dots)
        if mode == "nn":
            fy, fx = (idx // field.shape[1]).double(), (idx % field.shape[1]).double()
        else:
            fy, fx = _window_softargmax(field, dots, best, idx, _window_radius(field, radius), beta)
        out_xy.append(torch.stack([fx, fy], dim=1))
        out_s.append(best)
    xy = torch.cat(out_xy)
    if field.bounds is None:
        (h, w), (th, tw) = field.cells, tgt_size
        xy = torch.stack([cell_to_pixel(xy[:, 0], tw, w), cell_to_pixel(xy[:, 1], th, h)], dim=1)
    return PointMatches(xy.float(), torch.cat(out_s).float())
