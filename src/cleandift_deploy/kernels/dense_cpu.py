"""Blocked cosine nearest neighbours: never more than one tile of the similarity matrix.

The loop runs over column blocks of ``b`` (each normalised once into a small buffer) and, inside,
over row blocks of ``a`` taken as they are: a positive per-row factor does not change which column
wins a row, so rows are scaled by their inverse norms only where needed (the row winners at the
end, the tile itself when column winners are tracked for mutual matching). Every tile is one BLAS
call (multi-threaded by torch) followed by reductions that stay in cache. Running winners are
replaced only by strictly greater values, so ties keep the first index, as ``torch.argmax`` does.
Reductions use the vectorised ``amax``; the (slower) argmax runs only on the rows or columns whose
maximum improved, which after the first tiles is a small share of them.
"""

from __future__ import annotations

import torch

from .cosine import inverse_norms
from .types import MutualMatches, NearestNeighbours, mutual_from_argmax

ROW_BLOCK = 2048
COL_BLOCK = 512


class _Running:
    """Best-so-far values and indices per row (top-k) and per column (top-1)."""

    def __init__(self, n: int, m: int, k: int, device: torch.device, columns: bool) -> None:
        self.row_val = torch.full((n, k), -torch.inf, device=device)
        self.row_idx = torch.zeros((n, k), dtype=torch.long, device=device)
        self.col_val = torch.full((m,), -torch.inf, device=device) if columns else None
        self.col_idx = torch.zeros(m, dtype=torch.long, device=device) if columns else None

    def update_rows(self, rows: slice, tile: torch.Tensor, col0: int) -> None:
        """Merge a tile's row winners into the running rows (strictly greater replaces)."""
        k = self.row_val.shape[1]
        if k == 1:
            val = tile.amax(dim=1)
            run_val, run_idx = self.row_val[rows, 0], self.row_idx[rows, 0]
            better = (val > run_val).nonzero().squeeze(1)
            run_val[better] = val[better]
            run_idx[better] = tile[better].argmax(dim=1) + col0
            return
        val, idx = tile.topk(min(k, tile.shape[1]), dim=1)
        both_val = torch.cat([self.row_val[rows], val], dim=1)
        both_idx = torch.cat([self.row_idx[rows], idx + col0], dim=1)
        top_val, pos = both_val.topk(k, dim=1)
        self.row_val[rows] = top_val
        self.row_idx[rows] = both_idx.gather(1, pos)

    def update_cols(self, cols: slice, tile: torch.Tensor, row0: int) -> None:
        """Merge a tile's column winners into the running columns."""
        assert self.col_val is not None and self.col_idx is not None
        val = tile.amax(dim=0)
        run_val, run_idx = self.col_val[cols], self.col_idx[cols]
        better = (val > run_val).nonzero().squeeze(1)
        run_val[better] = val[better]
        run_idx[better] = tile[:, better].T.contiguous().argmax(dim=1) + row0


def blocked_match_dense(
    a: torch.Tensor, b: torch.Tensor, *, mutual: bool = False, k: int = 1
) -> NearestNeighbours | MutualMatches:
    """Cosine top-k (or mutual nearest neighbours) of ``a`` [N, C] rows among ``b`` [M, C] rows.

    Half-precision inputs are upcast to float32 once (BLAS has no fast half GEMM on most CPUs).
    """
    a, b = a.float(), b.float()
    (n, c), m = a.shape, b.shape[0]
    inv_a, inv_b = inverse_norms(a), inverse_norms(b)
    run = _Running(n, m, k, a.device, columns=mutual)
    b_buf = torch.empty(min(COL_BLOCK, m) * c, device=a.device)
    tile_buf = torch.empty(min(ROW_BLOCK, n) * min(COL_BLOCK, m), device=a.device)
    for c0 in range(0, m, COL_BLOCK):
        cols = slice(c0, min(c0 + COL_BLOCK, m))
        width = cols.stop - c0
        b_blk = torch.mul(b[cols], inv_b[cols, None], out=b_buf[: width * c].view(width, c))
        for r0 in range(0, n, ROW_BLOCK):
            rows = slice(r0, min(r0 + ROW_BLOCK, n))
            tile = tile_buf[: (rows.stop - r0) * width].view(rows.stop - r0, width)
            torch.mm(a[rows], b_blk.T, out=tile)
            if mutual:
                tile.mul_(inv_a[rows, None])
                run.update_cols(cols, tile, r0)
            run.update_rows(rows, tile, c0)
    if not mutual:
        return NearestNeighbours(run.row_idx, run.row_val * inv_a[:, None])
    assert run.col_idx is not None
    return mutual_from_argmax(run.row_idx[:, 0], run.row_val[:, 0], run.col_idx)
