"""Everything about a target feature map that query matching needs, computed once per target.

For an upsampled pixel u = sum_i w_i t_i (bilinear weights w_i over a 2x2 neighbourhood of coarse
vectors t_i) the squared norm is sum_ij w_i w_j t_i.t_j, so the Gram entries of every 2x2
neighbourhood give every upsampled pixel's exact norm without building the upsampled map. The
same Gram blocks, inverted, bound the best cosine any pixel of a neighbourhood can reach.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .cosine import EPS, inverse_norms
from .geometry import Axis, bilinear_axis

TILE = 8
GRAM_ROWS = 8
CONDITION_LIMIT = 1e-8


@dataclass(frozen=True)
class Tiles:
    """Runs of at most ``TILE`` consecutive output indices sharing one interpolation cell.

    ``index`` is [T, TILE]: the indices of each run, padded by repeating its last index.
    """

    first: torch.Tensor
    last: torch.Tensor
    index: torch.Tensor


@dataclass(frozen=True)
class Bounds:
    """Per-tile data for branch and bound on the upsampled grid.

    corner_rows/corner_cols: first and last index of every tile, interleaved; corner_wy/corner_wx:
    their interpolation rows; corner_inv: inverse norms of those corner pixels.
    inv_lo/inv_hi: [Ty, Tx] extreme inverse norms over each tile. gram_inv: [h, w, 4, 4] float64
    inverse Gram matrix of each neighbourhood's distinct corners (duplicates at the border are
    masked out by ``corner_mask`` [h, w, 4]); ``gram_ok`` [h, w] is False where that matrix is too
    ill-conditioned to trust (the bound is then not used there).
    """

    tiles_y: Tiles
    tiles_x: Tiles
    corner_wy: torch.Tensor
    corner_wx: torch.Tensor
    corner_inv: torch.Tensor
    inv_lo: torch.Tensor
    inv_hi: torch.Tensor
    gram_inv: torch.Tensor
    corner_mask: torch.Tensor
    gram_ok: torch.Tensor


@dataclass(frozen=True)
class TargetField:
    """A target map on its matching grid: coarse cells (``bounds is None``) or image pixels."""

    feat: torch.Tensor
    cells: tuple[int, int]
    shape: tuple[int, int]
    ay: Axis
    ax: Axis
    inv_norm: torch.Tensor
    bounds: Bounds | None


def _tiles(axis: Axis) -> Tiles:
    """Cut an axis into runs of at most TILE outputs with the same interpolation cell."""
    cells = axis.i0.tolist()
    firsts, lasts = [], []
    start = 0
    for o in range(1, len(cells) + 1):
        if o == len(cells) or cells[o] != cells[start] or o - start == TILE:
            firsts.append(start)
            lasts.append(o - 1)
            start = o
    first = torch.tensor(firsts, device=axis.i0.device)
    last = torch.tensor(lasts, device=axis.i0.device)
    index = torch.minimum(first[:, None] + torch.arange(TILE, device=first.device), last[:, None])
    return Tiles(first, last, index)


PAIRS = ((0, 0), (0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3), (2, 2), (2, 3), (3, 3))


def quadratic_form(g: torch.Tensor, v: list[torch.Tensor]) -> torch.Tensor:
    """sum_ij v_i g_ij v_j for symmetric [..., 4, 4] g and four broadcastable vectors v_i."""
    out = torch.zeros((), dtype=g.dtype, device=g.device)
    for i, j in PAIRS:
        out = out + (1 if i == j else 2) * g[..., i, j] * v[i] * v[j]
    return out


def _row_pair_gram(top: torch.Tensor, bottom: torch.Tensor) -> torch.Tensor:
    """[r, 2w, 2w] float64 dot products among the cells of each row and of the row below."""
    pair = torch.cat([top, bottom], dim=1).double()
    return pair @ pair.transpose(1, 2)


def neighbour_grams(t: torch.Tensor) -> torch.Tensor:
    """[h, w, 4, 4] Gram matrices of the four corners of each 2x2 neighbourhood of [C, h, w].

    One small GEMM per pair of consecutive rows (all dot products between the cells of rows y
    and y+1) holds every entry needed; they are then picked out per neighbourhood.
    """
    _, h, w = t.shape
    rows = t.permute(1, 2, 0)
    iy = (torch.arange(h, device=t.device) + 1).clamp_max(h - 1)
    full = torch.cat(
        [
            _row_pair_gram(rows[y : y + GRAM_ROWS], rows[iy[y : y + GRAM_ROWS]])
            for y in range(0, h, GRAM_ROWS)
        ]
    )
    x = torch.arange(w, device=t.device)
    pos = torch.stack([x, (x + 1).clamp_max(w - 1), w + x, w + (x + 1).clamp_max(w - 1)], dim=1)
    return full[:, pos[:, :, None], pos[:, None, :]]


def upsampled_inverse_norms(gram: torch.Tensor, ay: Axis, ax: Axis) -> torch.Tensor:
    """[H, W] float32 ``1 / max(|u|, EPS)`` of every bilinearly upsampled pixel u.

    |u|^2 = sum_ij w_i w_j G_ij with the corner weights w = (wy0 wx0, wy0 wx1, wy1 wx0, wy1 wx1).
    """
    wy = [ay.w0.double()[:, None], ay.w1.double()[:, None]]
    wx = [ax.w0.double()[None, :], ax.w1.double()[None, :]]
    norm2 = torch.zeros((), dtype=torch.float64, device=gram.device)
    for i, j in PAIRS:
        coef = (1 if i == j else 2) * wy[i // 2] * wy[j // 2] * wx[i % 2] * wx[j % 2]
        norm2 = norm2 + coef * gram[:, :, i, j][ay.i0][:, ax.i0]
    return norm2.clamp_min(0).sqrt().clamp_min(EPS).reciprocal().float()


def _gram_inverse(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of each neighbourhood's Gram over its distinct corners, the mask, and validity."""
    h, w = gram.shape[:2]
    dev = gram.device
    x_ok = (torch.arange(w, device=dev) < w - 1)[None, :].expand(h, w)
    y_ok = (torch.arange(h, device=dev) < h - 1)[:, None].expand(h, w)
    mask = torch.stack([torch.ones_like(x_ok), x_ok, y_ok, x_ok & y_ok], dim=-1).double()
    masked = gram * mask[..., :, None] * mask[..., None, :] + torch.diag_embed(1 - mask)
    diag = masked.diagonal(dim1=-2, dim2=-1)
    scale = diag.clamp_min(1e-300).rsqrt()
    eig = torch.linalg.eigvalsh(masked * scale[..., :, None] * scale[..., None, :])
    ok = (eig[..., 0] > CONDITION_LIMIT * eig[..., -1]) & (diag > 0).all(-1)
    eye = torch.eye(4, dtype=gram.dtype, device=dev)
    inv = torch.linalg.inv(torch.where(ok[..., None, None], masked, eye))
    return inv, mask, ok


def _tile_extremes(inv: torch.Tensor, ty: Tiles, tx: Tiles) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tile min and max of the inverse-norm map, [Ty, Tx] each."""
    rows = inv[ty.index]
    return rows.amin(1)[:, tx.index].amin(2), rows.amax(1)[:, tx.index].amax(2)


def prepare_target(tgt: torch.Tensor, size: tuple[int, int], upsample: str) -> TargetField:
    """Precompute everything about a target map that does not depend on the queries."""
    c, h, w = tgt.shape
    feat = tgt.float().reshape(c, h * w)
    if upsample == "none":
        ay, ax = bilinear_axis(h, h, tgt.device), bilinear_axis(w, w, tgt.device)
        inv = inverse_norms(feat.T).reshape(h, w)
        return TargetField(feat, (h, w), (h, w), ay, ax, inv, None)
    ay, ax = bilinear_axis(h, size[0], tgt.device), bilinear_axis(w, size[1], tgt.device)
    gram = neighbour_grams(tgt.float())
    inv = upsampled_inverse_norms(gram, ay, ax)
    ty, tx = _tiles(ay), _tiles(ax)
    rows = torch.stack([ty.first, ty.last], dim=1).flatten()
    cols = torch.stack([tx.first, tx.last], dim=1).flatten()
    wy, wx = ay.matrix(h)[rows], ax.matrix(w)[cols]
    lo, hi = _tile_extremes(inv, ty, tx)
    gram_inv, mask, ok = _gram_inverse(gram)
    bounds = Bounds(ty, tx, wy, wx, inv[rows][:, cols], lo, hi, gram_inv, mask, ok)
    return TargetField(feat, (h, w), size, ay, ax, inv, bounds)
