"""The fused Triton kernel, run through triton's CPU interpreter (TRITON_INTERPRET=1, set by
tests/conftest.py before triton is imported). bfloat16 is checked after the launcher's upcast:
the interpreter has no bfloat16 arithmetic."""

from __future__ import annotations

import os

import pytest
import torch
from kernel_checks import assert_pairs_equal, assert_top1_agrees

from cleandift_deploy.kernels import match_dense
from cleandift_deploy.kernels.oracles import reference_match_dense

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


GPU_TILES = {"BLOCK_N": 128, "BLOCK_M": 64, "BLOCK_C": 64}
"""The GPU's BLOCK_N and a GPU config's column tiles, run through the interpreter."""


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gpu_tiles_cross_row_blocks_slices_and_ties(dtype: torch.dtype) -> None:
    from cleandift_deploy.kernels.triton_dense import triton_match_dense

    if DEVICE == "cuda":
        pytest.skip("tile overrides apply to the interpreter; the GPU test runs the autotuner")
    n, m, c = 300, 1000, 80  # 3 row blocks of 128, 3 column slices of 384, C not a tile multiple
    a, b = torch.randn(n, c).to(dtype), torch.randn(m, c).to(dtype)
    b[900] = b[10] * 2  # the same direction in the first and the last slice: first index wins
    # rows in the first and third row block tie on column 10 (powers of two keep ties exact)
    a[5], a[260] = b[10], b[10] * 4
    got = triton_match_dense(a, b, blocks=GPU_TILES)
    assert got.scores.dtype == torch.float32
    assert got.indices[5, 0] == 10 and got.indices[260, 0] == 10
    assert_top1_agrees(a.float(), b.float(), got.indices, got.scores)
    mutual = triton_match_dense(a, b, mutual=True, blocks=GPU_TILES)
    want = reference_match_dense(a.float(), b.float(), mutual=True)
    assert [5, 10] in mutual.pairs.tolist() and [260, 10] not in mutual.pairs.tolist()
    assert_pairs_equal(mutual.pairs, want.pairs)


def test_scores_are_float32_whatever_the_default_dtype() -> None:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        a, b = torch.randn(20, 16, dtype=torch.float32), torch.randn(30, 16, dtype=torch.float32)
        got = match_dense(a.to(DEVICE), b.to(DEVICE), impl="triton")
        mutual = match_dense(a.to(DEVICE), b.to(DEVICE), mutual=True, impl="triton")
    finally:
        torch.set_default_dtype(previous)
    assert got.scores.dtype == torch.float32 and mutual.scores.dtype == torch.float32
    assert_top1_agrees(a, b, got.indices.cpu(), got.scores.cpu())


def test_autotune_key_is_bucketed_and_configs_are_per_dtype() -> None:
    from cleandift_deploy.kernels import triton_dense as td

    assert [td.size_bucket(x) for x in (1, 256, 257, 9216, 9217)] == [256, 256, 512, 16384, 16384]
    assert "M" not in td.TUNING_KEY and "M_BUCKET" in td.TUNING_KEY
    fp32 = {(k.kwargs["BLOCK_M"], k.kwargs["BLOCK_C"]) for k in td.gpu_configs(torch.float32)}
    half = {(k.kwargs["BLOCK_M"], k.kwargs["BLOCK_C"]) for k in td.gpu_configs(torch.float16)}
    assert fp32 and half and fp32 != half
    assert td.dot_precision(torch.float32) == "tf32x3"
    assert td.interpreting() is td.INTERPRETING


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_rows_blocks_and_slices_match_reference(dtype: torch.dtype) -> None:
    n, m, c = 1100, 5000, 1280  # 9 row blocks; several slices on any GPU
    a, b = torch.randn(n, c).to(dtype), torch.randn(m, c).to(dtype)
    b[4900] = b[7] * 2
    a[3], a[1000] = b[7], b[7] * 4
    got = match_dense(a.cuda(), b.cuda(), impl="triton")
    assert got.indices[3, 0] == 7 and got.indices[1000, 0] == 7
    assert_top1_agrees(a.float(), b.float(), got.indices.cpu(), got.scores.cpu())
    mutual = match_dense(a.cuda(), b.cuda(), mutual=True, impl="triton")
    assert [3, 7] in mutual.pairs.tolist() and [1000, 7] not in mutual.pairs.tolist()


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_properties(0).total_memory < 24 << 30,
    reason="needs a CUDA GPU with 24 GB",
)
def test_gpu_gallery_past_int32_offsets() -> None:
    """1.7M x 1280 fp16 rows (m * c > 2^31): the planted neighbours sit past the wrap point."""
    g = torch.Generator(device="cuda").manual_seed(2)
    a = torch.randn(256, 1280, device="cuda", generator=g).half()
    b = torch.randn(1_700_000, 1280, device="cuda", generator=g).half()
    planted = torch.arange(b.shape[0] - 32, b.shape[0], device="cuda")
    b[planted] = a[:32] * 2
    got = match_dense(a, b, impl="triton")
    assert torch.equal(got.indices[:32, 0], planted)
    assert torch.all(got.scores[:32, 0] > 0.999)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_gpu_inputs_on_the_second_device() -> None:
    a, b = torch.randn(300, 64, device="cuda:1"), torch.randn(500, 64, device="cuda:1")
    with torch.cuda.device(0):
        got = match_dense(a, b, impl="triton")
    assert got.indices.device == a.device
    assert_top1_agrees(a.cpu(), b.cpu(), got.indices.cpu(), got.scores.cpu())
