"""The fused Triton kernel, run through triton's CPU interpreter (TRITON_INTERPRET=1, set by
tests/conftest.py before triton is imported). bfloat16 is checked after the launcher's upcast:
the interpreter has no bfloat16 arithmetic."""

from __future__ import annotations

import os

import pytest
import torch
from kernel_checks import assert_pairs_equal, assert_top1_agrees

from cleandift_deploy.kernels import match_dense
from cleandift_deploy.kernels.reference import reference_match_dense

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
    reason="needs a GPU or the triton interpreter",
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

SHAPES = [(1, 1, 3), (1, 40, 3), (257, 70, 16), (33, 65, 1280)]


@pytest.mark.parametrize(("n", "m", "c"), SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_triton_top1_matches_reference(n: int, m: int, c: int, dtype: torch.dtype) -> None:
    a, b = torch.randn(n, c).to(dtype), torch.randn(m, c).to(dtype)
    got = match_dense(a.to(DEVICE), b.to(DEVICE), impl="triton")
    assert got.indices.shape == (n, 1) and got.scores.dtype == torch.float32
    assert_top1_agrees(a.float(), b.float(), got.indices.cpu(), got.scores.cpu())


@pytest.mark.parametrize(("n", "m", "c"), [(257, 70, 16), (70, 100, 64)])
def test_triton_mutual_matches_reference(n: int, m: int, c: int) -> None:
    a, b = torch.randn(n, c), torch.randn(m, c)
    got = match_dense(a.to(DEVICE), b.to(DEVICE), mutual=True, impl="triton")
    want = reference_match_dense(a, b, mutual=True)
    assert len(want.pairs) > 0
    assert_pairs_equal(got.pairs.cpu(), want.pairs)
    assert torch.allclose(got.scores.cpu(), want.scores, atol=1e-5, rtol=0)


def test_triton_ties_and_zero_rows_across_programs_and_tiles() -> None:
    b = torch.randn(100, 8)
    b[70] = b[5] * 4.0  # exact same cosine, in a later column tile and slice
    b[90] = 0
    a = torch.cat([b[5:6], torch.randn(40, 8), b[5:6] * 2.0, torch.zeros(1, 8)])
    got = match_dense(a.to(DEVICE), b.to(DEVICE), impl="triton")
    assert got.indices[0, 0] == 5 and got.indices[41, 0] == 5
    assert got.scores[-1, 0] == 0 and got.indices[-1, 0] == 0
    assert torch.isfinite(got.scores).all()
    mutual = match_dense(a.to(DEVICE), b.to(DEVICE), mutual=True, impl="triton").pairs.tolist()
    assert [0, 5] in mutual and [41, 5] not in mutual  # row 41 ties row 0 in another program


def test_partials_reduce_to_highest_then_first_index() -> None:
    from cleandift_deploy.kernels.triton_dense import _reduce_partials

    val = torch.tensor([[0.5, 0.9, 0.1], [0.7, 0.9, 0.1], [0.7, 0.2, 0.3]])
    idx = torch.tensor([[3, 1, 0], [40, 35, 33], [70, 64, 65]], dtype=torch.int32)
    best, first = _reduce_partials(val, idx)
    assert first.tolist() == [40, 1, 65]
    assert torch.equal(best, torch.tensor([0.7, 0.9, 0.3]))
