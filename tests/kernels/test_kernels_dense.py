"""Dense matching: the blocked CPU path and the dispatcher against the full-matrix reference."""

from __future__ import annotations

import pytest
import torch
from kernel_checks import assert_pairs_equal, assert_top1_agrees, cosine_matrix

from cleandift_deploy.kernels import as_kornia_matches, dense_cpu, match_dense
from cleandift_deploy.kernels.oracles import reference_match_dense

SHAPES = [(1, 1, 1), (1, 7, 3), (257, 130, 3), (300, 257, 64), (40, 70, 1280)]


@pytest.fixture
def small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny tiles, so every case crosses many tile borders in both directions."""
    monkeypatch.setattr(dense_cpu, "ROW_BLOCK", 32)
    monkeypatch.setattr(dense_cpu, "COL_BLOCK", 48)


@pytest.mark.parametrize(("n", "m", "c"), SHAPES)
def test_blocked_top1_matches_reference(small_blocks: None, n: int, m: int, c: int) -> None:
    a, b = torch.randn(n, c), torch.randn(m, c)
    got = match_dense(a, b, impl="blocked")
    assert got.indices.shape == (n, 1) and got.scores.shape == (n, 1)
    assert_top1_agrees(a, b, got.indices, got.scores)


@pytest.mark.parametrize(("n", "m", "c"), [(257, 130, 8), (64, 300, 64)])
def test_blocked_topk_matches_reference(small_blocks: None, n: int, m: int, c: int) -> None:
    a, b = torch.randn(n, c), torch.randn(m, c)
    got = match_dense(a, b, k=5, impl="blocked")
    want = cosine_matrix(a, b).topk(5, dim=1)
    assert torch.allclose(got.scores.double(), want.values, atol=1e-5, rtol=0)
    assert torch.equal(got.indices, want.indices)


@pytest.mark.parametrize(("n", "m", "c"), [(257, 130, 3), (200, 333, 64)])
def test_blocked_mutual_matches_reference(small_blocks: None, n: int, m: int, c: int) -> None:
    a, b = torch.randn(n, c), torch.randn(m, c)
    got = match_dense(a, b, mutual=True, impl="blocked")
    want = reference_match_dense(a, b, mutual=True)
    assert len(want.pairs) > 0
    assert_pairs_equal(got.pairs, want.pairs)
    assert torch.allclose(got.scores, want.scores, atol=1e-5, rtol=0)


def test_ties_go_to_the_first_index_across_tiles(small_blocks: None) -> None:
    b = torch.randn(200, 16)
    b[150] = b[3] * 2.0  # same direction, exactly the same cosine, in a later tile
    b[60] = b[3]
    a = torch.cat([b[3:4] * 0.5, torch.randn(40, 16), b[3:4]])
    got = match_dense(a, b, impl="blocked")
    assert got.indices[0, 0] == 3 and got.indices[-1, 0] == 3
    mutual = match_dense(a, b, mutual=True, impl="blocked")
    assert [0, 3] in mutual.pairs.tolist()  # row 0 is b[3]'s first best row; row 41 ties later
    assert [41, 3] not in mutual.pairs.tolist()


def test_zero_vectors_give_zero_scores_not_nan(small_blocks: None) -> None:
    a, b = torch.randn(70, 8), torch.randn(90, 8)
    a[5] = 0
    b[:, :] = torch.where(torch.arange(90)[:, None] % 7 == 0, 0.0, b)
    for impl in ("blocked", "reference"):
        got = match_dense(a, b, impl=impl)
        assert torch.isfinite(got.scores).all()
        assert got.scores[5, 0] == 0 and got.indices[5, 0] == 0
    assert_top1_agrees(a, b, match_dense(a, b).indices, match_dense(a, b).scores)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_match_reference_on_the_same_values(dtype: torch.dtype) -> None:
    a, b = torch.randn(130, 64).to(dtype), torch.randn(257, 64).to(dtype)
    got = match_dense(a, b)
    assert got.scores.dtype == torch.float32
    assert_top1_agrees(a.float(), b.float(), got.indices, got.scores)


def test_auto_on_cpu_is_the_blocked_path() -> None:
    a, b = torch.randn(50, 32), torch.randn(60, 32)
    auto, blocked = match_dense(a, b, mutual=True), match_dense(a, b, mutual=True, impl="blocked")
    assert torch.equal(auto.pairs, blocked.pairs) and torch.equal(auto.scores, blocked.scores)


def test_kornia_layout_gives_l2_distances_of_unit_vectors() -> None:
    a, b = torch.randn(80, 16), torch.randn(90, 16)
    matches = match_dense(a, b, mutual=True)
    dists, idxs = as_kornia_matches(matches)
    assert dists.shape == (len(idxs), 1) and idxs.shape == (len(idxs), 2)
    an = torch.nn.functional.normalize(a, dim=1)
    bn = torch.nn.functional.normalize(b, dim=1)
    want = (an[idxs[:, 0]] - bn[idxs[:, 1]]).norm(dim=1)
    assert torch.allclose(dists[:, 0], want, atol=1e-5)
