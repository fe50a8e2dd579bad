"""Exact cosine nearest neighbours (k=1, plain or mutual) through a bf16 prefilter.

Each tile of the similarity matrix is computed approximately, as one bfloat16 GEMM of unit rows
(AMX-accelerated on CPUs that have it, several times the fp32 rate). Entries within a margin of
their row's running approximate maximum (and, for mutual matching, their column's) are kept as
candidates; once a row block has seen every column, the candidates still within the margin of the
final approximate maximum are re-scored exactly in float32 and the winners are taken from those
exact scores alone (columns: once every row block is done).

Error bound. Let x, y be the float32 unit rows (|x|, |y| <= 1 + C 2^-24) and s = x . y. Rounding
each element to bfloat16 (unit roundoff u = 2^-9) gives x~_i y~_i = x_i y_i (1 + d_i) with
|d_i| <= 2u + u^2, so |sum x~_i y~_i - s| <= (2u + u^2) sum |x_i y_i| <= (2u + u^2) |x| |y| by
Cauchy-Schwarz. The GEMM accumulates in float32 (at most about C 2^-24 relative to sum |x~ y~|)
and rounds its result to bfloat16 (u |s~| <= u (1 + 2u)). Hence |s~ - s| <= e with

    e = (3u + u^2) (1 + 2u)^2 + C 2^-24 (1 + 2u)^2  ~= 0.00586 + 6e-8 C,

and the float32 re-score differs from s by at most about C 2^-24 more; let e' be e plus that.
If j* is a row's exact argmax and m~ the row's largest approximate score, reached at some column
j', then s~_j* >= s_j* - e' >= s_j' - e' >= m~ - 2e'. So keeping every column with
s~_j >= m~ - ``margin(C)``, margin(C) = 2e' (about 0.012 for C = 1280), never loses the argmax;
the same holds for columns. The running maximum only grows, so an entry dropped against it
would also fail against the final one.

Ties: all of a row's surviving candidates are re-scored together and the lowest index wins among
equal exact scores, as ``torch.argmax`` does. A tile whose row (or column) candidates exceed
``MAX_CANDIDATES_PER_ROW`` per row on average (e.g. zero rows, whose approximate scores are all
0) is computed in float32 instead, and contributes only its exact per-row (per-column) winners.
"""

from __future__ import annotations

import torch

from .cosine import inverse_norms
from .types import MutualMatches, NearestNeighbours, mutual_from_argmax

ROW_BLOCK = 1024
COL_BLOCK = 512
RESCORE_CHUNK = 256
MAX_CANDIDATES_PER_ROW = 32
GROUP = 64
BF16_UNIT_ROUNDOFF = 2.0**-9
FP32_UNIT_ROUNDOFF = 2.0**-24


def margin(channels: int) -> float:
    """Safety margin on approximate scores: twice the rigorous bf16-GEMM error bound."""
    u = BF16_UNIT_ROUNDOFF
    growth = (1 + 2 * u) ** 2
    bf16_error = (3 * u + u * u) * growth
    fp32_error = 2 * channels * FP32_UNIT_ROUNDOFF * growth
    return 2 * (bf16_error + fp32_error)


def _unit_bf16(x: torch.Tensor, inv: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """bfloat16 rounding of the rows of x scaled to unit length, written into ``out``."""
    return torch.mul(x, inv[:, None], out=out)


def _rescore(
    a: torch.Tensor, b: torch.Tensor, inv_a: torch.Tensor, inv_b: torch.Tensor, pairs: torch.Tensor
) -> torch.Tensor:
    """Float32 cosine of the (row, column) pairs [P, 2] (global indices), in bounded chunks."""
    out = torch.empty(len(pairs), device=a.device)
    for start in range(0, len(pairs), RESCORE_CHUNK):
        r, j = pairs[start : start + RESCORE_CHUNK].unbind(1)
        dots = torch.linalg.vecdot(a[r].float(), b[j].float())
        out[start : start + len(r)] = dots * inv_a[r] * inv_b[j]
    return out


def _best_per_group(
    group: torch.Tensor, other: torch.Tensor, score: torch.Tensor, size: int, fill: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group id in [0, size): the highest score and, among equal ones, the lowest ``other``.

    Groups without entries get -inf and ``fill``.
    """
    best = torch.full((size,), -torch.inf, device=score.device)
    best.scatter_reduce_(0, group, score, "amax")
    top = score == best[group]
    first = torch.full((size,), fill, dtype=torch.long, device=score.device)
    first.scatter_reduce_(0, group[top], other[top], "amin", include_self=False)
    return best, first


class _Candidates:
    """(row, column, approximate score) triples, global indices, appended tile by tile."""

    def __init__(self) -> None:
        self.parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def add(self, r: torch.Tensor, j: torch.Tensor, s: torch.Tensor) -> None:
        self.parts.append((r, j, s))

    def survivors(self, group_max: torch.Tensor, by_row: bool, eps: float) -> torch.Tensor:
        """Pairs [P, 2] within ``eps`` of their group's final maximum; empties the list."""
        r, j, s = (torch.cat(t) for t in zip(*self.parts, strict=True))
        self.parts = []
        keep = s >= group_max[r if by_row else j] - eps
        return torch.stack([r[keep], j[keep]], dim=1)


class _Prefilter:
    """Approximate tiles, candidate collection, exact re-score and the winners."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, mutual: bool) -> None:
        self.a, self.b, self.mutual = a, b, mutual
        (n, c), m = a.shape, b.shape[0]
        dev = a.device
        self.inv_a, self.inv_b = inverse_norms(a), inverse_norms(b)
        self.eps = margin(c)
        rows, cols = min(ROW_BLOCK, n), min(COL_BLOCK, m)
        self.a_buf = torch.empty(rows * c, dtype=torch.bfloat16, device=dev)
        self.b_buf = torch.empty(cols * c, dtype=torch.bfloat16, device=dev)
        self.tile_buf = torch.empty(rows * cols, dtype=torch.bfloat16, device=dev)
        self.row_val = torch.empty(n, device=dev)
        self.row_idx = torch.empty(n, dtype=torch.long, device=dev)
        self.row_max = torch.full((n,), -torch.inf, device=dev)
        self.col_max = torch.full((m,), -torch.inf, device=dev)
        self.row_cands, self.col_cands = _Candidates(), _Candidates()
        self.rescored = 0

    def unit_block(self, x: torch.Tensor, inv: torch.Tensor, part: slice, buf: torch.Tensor):
        """bfloat16 unit rows of ``x[part]`` in ``buf``."""
        c = x.shape[1]
        return _unit_bf16(x[part], inv[part], buf[: (part.stop - part.start) * c].view(-1, c))

    def collect(self, tile: torch.Tensor, rows: slice, cols: slice) -> None:
        """Raise the running maxima with one approximate tile and keep its candidates.

        Row candidates are found through maxima of ``GROUP``-column groups, so the comparison
        and compaction run on the few groups near the row maximum instead of the whole tile.
        """
        width = tile.shape[1]
        size = GROUP if width % GROUP == 0 else width
        groups = tile.view(tile.shape[0], width // size, size)
        group_max = groups.amax(dim=2)
        row_max = self.row_max[rows]
        torch.maximum(row_max, group_max.amax(dim=1).float(), out=row_max)
        thr = row_max - self.eps
        gr, gg = (group_max >= thr[:, None]).nonzero().unbind(1)
        vals = groups[gr, gg]
        pr, pk = (vals >= thr[gr, None]).nonzero().unbind(1)
        col_pairs = self.column_candidates(tile, cols) if self.mutual else None
        limit = MAX_CANDIDATES_PER_ROW * tile.shape[0]
        if len(pr) > limit or (col_pairs is not None and len(col_pairs) > limit):
            self.exact_tile(rows, cols)
            return
        r, j = gr[pr], gg[pr] * size + pk
        self.row_cands.add(r + rows.start, j + cols.start, vals[pr, pk].float())
        if col_pairs is not None:
            r, j = col_pairs.unbind(1)
            self.col_cands.add(r + rows.start, j + cols.start, tile[r, j].float())

    def column_candidates(self, tile: torch.Tensor, cols: slice) -> torch.Tensor:
        """Tile positions within the margin of their column's running approximate maximum."""
        col_max = self.col_max[cols]
        torch.maximum(col_max, tile.amax(dim=0).float(), out=col_max)
        return (tile >= (col_max - self.eps)[None, :]).nonzero()

    def exact_tile(self, rows: slice, cols: slice) -> None:
        """Float32 tile in row chunks; only its exact row (column) winners become candidates."""
        b_cols = self.b[cols].float()
        step = max(1, self.tile_buf.numel() // (2 * b_cols.shape[0]))
        j0 = torch.arange(cols.start, cols.stop, device=b_cols.device)
        for r0 in range(rows.start, rows.stop, step):
            sub = slice(r0, min(r0 + step, rows.stop))
            tile = self.a[sub].float() @ b_cols.T
            tile.mul_(self.inv_a[sub, None]).mul_(self.inv_b[None, cols])
            val, idx = tile.max(dim=1)
            r = torch.arange(sub.start, sub.stop, device=tile.device)
            torch.maximum(self.row_max[sub], val, out=self.row_max[sub])
            self.row_cands.add(r, idx + cols.start, val)
            if self.mutual:
                val, idx = tile.max(dim=0)
                torch.maximum(self.col_max[cols], val, out=self.col_max[cols])
                self.col_cands.add(idx + r0, j0, val)

    def exact(self, pairs: torch.Tensor) -> torch.Tensor:
        """Float32 cosines of candidate pairs, counted in ``rescored``."""
        self.rescored += len(pairs)
        return _rescore(self.a, self.b, self.inv_a, self.inv_b, pairs)

    def finish_rows(self, rows: slice) -> None:
        """Exact winners of a row block from its surviving candidates."""
        pairs = self.row_cands.survivors(self.row_max, True, self.eps)
        val, idx = _best_per_group(
            pairs[:, 0] - rows.start, pairs[:, 1], self.exact(pairs), rows.stop - rows.start, 0
        )
        self.row_val[rows], self.row_idx[rows] = val, idx

    def column_winners(self) -> torch.Tensor:
        """Exact best row of every column (first index on ties), after all row blocks."""
        pairs = self.col_cands.survivors(self.col_max, False, self.eps)
        _, idx = _best_per_group(pairs[:, 1], pairs[:, 0], self.exact(pairs), len(self.b), 0)
        return idx


def run_prefilter(a: torch.Tensor, b: torch.Tensor, mutual: bool) -> _Prefilter:
    """All tiles: row blocks of ``a`` (rounded to bf16 once each) outside, column blocks inside.

    The returned state holds the row winners and the number of re-scored candidates.
    """
    state = _Prefilter(a, b, mutual)
    n, m = a.shape[0], b.shape[0]
    for r0 in range(0, n, ROW_BLOCK):
        rows = slice(r0, min(r0 + ROW_BLOCK, n))
        a16 = state.unit_block(a, state.inv_a, rows, state.a_buf)
        for c0 in range(0, m, COL_BLOCK):
            cols = slice(c0, min(c0 + COL_BLOCK, m))
            b16 = state.unit_block(b, state.inv_b, cols, state.b_buf)
            tile = state.tile_buf[: len(a16) * len(b16)].view(len(a16), len(b16))
            state.collect(torch.mm(a16, b16.T, out=tile), rows, cols)
        state.finish_rows(rows)
    return state


def prefilter_match_dense(
    a: torch.Tensor, b: torch.Tensor, *, mutual: bool = False
) -> NearestNeighbours | MutualMatches:
    """Exact float32 cosine top-1 (or mutual nearest neighbours) via bf16-prefiltered tiles.

    Any float dtype is accepted; scores are the float32 cosines of the given values.
    """
    state = run_prefilter(a, b, mutual)
    if not mutual:
        return NearestNeighbours(state.row_idx[:, None], state.row_val[:, None])
    return mutual_from_argmax(state.row_idx, state.row_val, state.column_winners())
