"""Assertions shared by the kernel tests: agreement with the reference up to genuine near-ties."""

from __future__ import annotations

import torch

from cleandift_deploy.kernels.cosine import normalize_rows

SCORE_TOL = 1e-5


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Full [N, M] cosine matrix in float64 (the ground truth for small inputs)."""
    return normalize_rows(a.double()).double() @ normalize_rows(b.double()).double().T


def assert_top1_agrees(a: torch.Tensor, b: torch.Tensor, idx: torch.Tensor, val: torch.Tensor):
    """Each row's pick must be the reference argmax, or score within SCORE_TOL of the best."""
    sim = cosine_matrix(a, b)
    best_val, best_idx = sim.max(dim=1)
    picked = sim.gather(1, idx.view(-1, 1).long()).squeeze(1)
    assert torch.all(best_val - picked < SCORE_TOL), "picked a column clearly worse than the best"
    assert torch.allclose(val.double().flatten(), best_val, atol=SCORE_TOL, rtol=0)
    margin = sim.topk(min(2, sim.shape[1]), dim=1).values
    clear = (
        (margin[:, 0] - margin[:, -1] > 1e-4)
        if sim.shape[1] > 1
        else torch.ones_like(best_val).bool()
    )
    assert torch.equal(idx.view(-1)[clear], best_idx[clear])


def assert_pairs_equal(got: torch.Tensor, want: torch.Tensor) -> None:
    """Two [P, 2] pair lists hold the same pairs."""
    to_set = lambda p: set(map(tuple, p.tolist()))  # noqa: E731
    assert to_set(got) == to_set(want)
