"""Result types returned by the matching entry points."""

from __future__ import annotations

from typing import NamedTuple

import torch


class NearestNeighbours(NamedTuple):
    """Best ``k`` rows of ``b`` for every row of ``a``, best first.

    indices: [N, k] int64 row indices into ``b``; scores: [N, k] float32 cosine similarities.
    """

    indices: torch.Tensor
    scores: torch.Tensor


class MutualMatches(NamedTuple):
    """Mutual nearest neighbours: ``b[j]`` is ``a[i]``'s best match and ``a[i]`` is ``b[j]``'s.

    pairs: [P, 2] int64 rows ``(i, j)`` sorted by ``i``; scores: [P] float32 cosine similarities.
    """

    pairs: torch.Tensor
    scores: torch.Tensor


class PointMatches(NamedTuple):
    """Query-point matches: [K, 2] float32 (x, y) target pixels and [K] float32 cosine scores."""

    points: torch.Tensor
    scores: torch.Tensor


def mutual_from_argmax(
    row_idx: torch.Tensor, row_val: torch.Tensor, col_idx: torch.Tensor
) -> MutualMatches:
    """Keep rows i whose best column j has i as its own best row."""
    rows = torch.arange(row_idx.numel(), device=row_idx.device)
    keep = col_idx[row_idx] == rows
    pairs = torch.stack([rows[keep], row_idx[keep]], dim=1)
    return MutualMatches(pairs, row_val[keep].float())
