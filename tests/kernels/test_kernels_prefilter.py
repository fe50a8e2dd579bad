"""Dense top-1 through the bf16 prefilter: exact float32 answers whatever bf16 cannot resolve.

Every test calls the prefilter path explicitly (``impl="prefilter"``), so it runs on any CPU;
tiny tiles make every case cross many tile borders in both directions.
"""

from __future__ import annotations

import pytest
import torch
from kernel_checks import assert_pairs_equal, assert_top1_agrees, cosine_matrix

from cleandift_deploy.kernels import dense_prefilter, match_dense
from cleandift_deploy.kernels.oracles import reference_match_dense

SHAPES = [(1, 1, 1), (1, 7, 3), (257, 130, 3), (300, 257, 64), (40, 70, 1280), (129, 300, 1280)]


@pytest.fixture
def small_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dense_prefilter, "ROW_BLOCK", 32)
    monkeypatch.setattr(dense_prefilter, "COL_BLOCK", 48)
    monkeypatch.setattr(dense_prefilter, "RESCORE_CHUNK", 40)


def assert_scores_match_reference(a: torch.Tensor, b: torch.Tensor, got_idx, got_val) -> None:
    """Where the pick equals the float32 reference's, the score equals its score to ~1e-6."""
    want = reference_match_dense(a.float(), b.float())
    same = got_idx.view(-1) == want.indices.view(-1)
    diff = (got_val.view(-1)[same] - want.scores.view(-1)[same]).abs()
    assert diff.max() <= 2e-6, f"score differs from the reference by {diff.max():.2e}"


@pytest.mark.parametrize(("n", "m", "c"), SHAPES)
def test_top1_matches_reference(small_tiles: None, n: int, m: int, c: int) -> None:
    a, b = torch.randn(n, c), torch.randn(m, c)
    got = match_dense(a, b, impl="prefilter")
    assert got.indices.shape == (n, 1) and got.scores.shape == (n, 1)
    assert got.scores.dtype == torch.float32
    assert_top1_agrees(a, b, got.indices, got.scores)
    assert_scores_match_reference(a, b, got.indices, got.scores)


@pytest.mark.parametrize(("n", "m", "c"), [(257, 130, 3), (200, 333, 64), (150, 97, 1280)])
def test_mutual_matches_reference(small_tiles: None, n: int, m: int, c: int) -> None:
    a, b = torch.randn(n, c), torch.randn(m, c)
    got = match_dense(a, b, mutual=True, impl="prefilter")
    want = reference_match_dense(a, b, mutual=True)
    assert len(want.pairs) > 0
    assert_pairs_equal(got.pairs, want.pairs)
    assert torch.allclose(got.scores, want.scores, atol=2e-6, rtol=0)


def near_tie_inputs(n: int, m: int, c: int, spread: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of b and a all within ``spread`` of one direction: cosines differ by ~spread^2."""
    v = torch.randn(c)
    b = v + spread * v.norm() * torch.randn(m, c) / c**0.5
    a = v + spread * v.norm() * torch.randn(n, c) / c**0.5
    return a, b


def bf16_argmax(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """What a bf16 GEMM of unit rows alone would pick."""
    an, bn = torch.nn.functional.normalize(a, dim=1), torch.nn.functional.normalize(b, dim=1)
    return (an.bfloat16() @ bn.bfloat16().T).float().argmax(dim=1)


def test_near_ties_below_bf16_resolution_pick_the_exact_best(small_tiles: None) -> None:
    a, b = near_tie_inputs(200, 150, 256, spread=0.2)
    sim = cosine_matrix(a, b)
    top2 = sim.topk(2, dim=1).values
    assert (top2[:, 0] - top2[:, 1]).max() < 0.01, "near-ties must be closer than bf16 error"
    exact = sim.argmax(dim=1)
    assert (bf16_argmax(a, b) != exact).float().mean() > 0.3, "bf16 alone must get these wrong"
    got = match_dense(a, b, impl="prefilter")
    assert_top1_agrees(a, b, got.indices, got.scores)
    clear = top2[:, 0] - top2[:, 1] > 1e-4
    assert clear.sum() > 100
    mutual = match_dense(a, b, mutual=True, impl="prefilter")
    assert_pairs_equal(mutual.pairs, reference_match_dense(a, b, mutual=True).pairs)


def test_ties_go_to_the_first_index_across_tiles(small_tiles: None) -> None:
    b = torch.randn(200, 16)
    b[150] = b[3] * 2.0
    b[60] = b[3]
    b[4] = b[3]
    a = torch.cat([b[3:4] * 0.5, torch.randn(40, 16), b[3:4]])
    got = match_dense(a, b, impl="prefilter")
    assert got.indices[0, 0] == 3 and got.indices[-1, 0] == 3
    mutual = match_dense(a, b, mutual=True, impl="prefilter")
    assert [0, 3] in mutual.pairs.tolist()
    assert [41, 3] not in mutual.pairs.tolist()


def test_zero_vectors_give_zero_scores_and_first_index(small_tiles: None) -> None:
    a, b = torch.randn(70, 8), torch.randn(90, 8)
    a[5] = 0
    b[:, :] = torch.where(torch.arange(90)[:, None] % 7 == 0, 0.0, b)
    got = match_dense(a, b, impl="prefilter")
    assert torch.isfinite(got.scores).all()
    assert got.scores[5, 0] == 0 and got.indices[5, 0] == 0
    assert_top1_agrees(a, b, got.indices, got.scores)


def test_tiles_with_too_many_candidates_fall_back_to_float32(
    small_tiles: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = torch.randn(130, 64), torch.randn(200, 64)
    a[::3] = 0
    monkeypatch.setattr(dense_prefilter, "MAX_CANDIDATES_PER_ROW", 8)
    calls: list[slice] = []
    exact_tile = dense_prefilter._Prefilter.exact_tile

    def counting(self: dense_prefilter._Prefilter, rows: slice, cols: slice) -> None:
        calls.append(rows)
        exact_tile(self, rows, cols)

    monkeypatch.setattr(dense_prefilter._Prefilter, "exact_tile", counting)
    got = match_dense(a, b, impl="prefilter")
    assert_top1_agrees(a, b, got.indices, got.scores)
    mutual = match_dense(a, b, mutual=True, impl="prefilter")
    assert_pairs_equal(mutual.pairs, reference_match_dense(a, b, mutual=True).pairs)
    assert len(calls) > 0, "the all-zero rows' tiles must have fallen back to float32"


def test_random_features_need_few_candidates() -> None:
    a, b = torch.randn(600, 256), torch.randn(800, 256)
    state = dense_prefilter.run_prefilter(a, b, mutual=False)
    assert state.rescored / 600 < 10


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_match_reference_on_the_same_values(small_tiles: None, dtype) -> None:
    a, b = torch.randn(130, 64).to(dtype), torch.randn(257, 64).to(dtype)
    got = match_dense(a, b, impl="prefilter")
    assert got.scores.dtype == torch.float32
    assert_top1_agrees(a.float(), b.float(), got.indices, got.scores)
    assert_scores_match_reference(a, b, got.indices, got.scores)
    mutual = match_dense(a, b, mutual=True, impl="prefilter")
    assert_pairs_equal(mutual.pairs, reference_match_dense(a.float(), b.float(), mutual=True).pairs)


def bf16_tile_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |approximate - exact| over a tile computed as the prefilter computes it."""
    state = dense_prefilter._Prefilter(a, b, mutual=False)
    rows, cols = slice(0, len(a)), slice(0, len(b))
    approx = (
        state.unit_block(a, state.inv_a, rows, state.a_buf)
        @ state.unit_block(b, state.inv_b, cols, state.b_buf).T
    )
    return float((approx.double() - cosine_matrix(a, b)).abs().max())


@pytest.mark.parametrize("c", [3, 64, 1280])
def test_error_bound_holds_with_room(c: int) -> None:
    a, b = torch.randn(64, c), torch.randn(96, c)
    aligned = torch.cat([a, a[:32] + 1e-3 * torch.randn(32, c)])  # cosines near 1
    err = max(bf16_tile_error(a, b), bf16_tile_error(a, aligned))
    assert err <= dense_prefilter.margin(c) / 2
    assert 0.005 < dense_prefilter.margin(c) < 0.02


def test_k_above_one_is_refused_by_the_prefilter() -> None:
    with pytest.raises(ValueError, match="k=1 only"):
        match_dense(torch.randn(5, 4), torch.randn(6, 4), k=2, impl="prefilter")


def test_auto_takes_the_prefilter_only_for_large_cpu_problems(monkeypatch) -> None:
    from cleandift_deploy.kernels import api

    monkeypatch.setattr(api, "prefers_bf16_gemm", lambda: True)
    small, large = torch.randn(8, 4), torch.randn(4096, 4)
    assert api.choose_dense_impl(small, small, 1) == "blocked"
    assert api.choose_dense_impl(large, large, 1) == "prefilter"
    assert api.choose_dense_impl(large, large, 2) == "blocked"
    monkeypatch.setattr(api, "prefers_bf16_gemm", lambda: False)
    assert api.choose_dense_impl(large, large, 1) == "blocked"


def test_bf16_preference_needs_both_the_flags_and_the_measured_speed(monkeypatch) -> None:
    from cleandift_deploy.kernels import cpu_features

    if cpu_features.has_bf16_gemm_isa():  # elsewhere bf16 is emulated: seconds to measure
        speedup = cpu_features.bf16_gemm_speedup()
        assert speedup > 0 and cpu_features.bf16_gemm_speedup() == speedup  # measured once
    for isa, measured, expected in [(True, 2.5, True), (True, 1.1, False), (False, 9.0, False)]:
        monkeypatch.setattr(cpu_features, "has_bf16_gemm_isa", lambda isa=isa: isa)
        monkeypatch.setattr(cpu_features, "bf16_gemm_speedup", lambda m=measured: m)
        assert cpu_features.prefers_bf16_gemm() is expected


def test_bf16_isa_comes_from_the_cpu_flags_and_onednn_cap(monkeypatch, tmp_path) -> None:
    from cleandift_deploy.kernels import cpu_features

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    onednn = torch.backends.mkldnn.is_available()
    monkeypatch.setattr(cpu_features, "CPUINFO", tmp_path / "cpuinfo")
    for flags, expected in [
        ("fpu avx2 avx512_bf16", True),
        ("fpu amx_bf16", True),
        ("avx2", False),
    ]:
        (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        cpu_features.has_bf16_gemm_isa.cache_clear()
        assert cpu_features.has_bf16_gemm_isa() is (expected and onednn), flags
    (tmp_path / "cpuinfo").write_text("flags\t\t: avx2 avx512_bf16\n")
    for cap, expected in [("AVX2", False), ("avx512_core", False), ("AVX512_CORE_BF16", True)]:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
        cpu_features.has_bf16_gemm_isa.cache_clear()
        assert cpu_features.has_bf16_gemm_isa() is (expected and onednn), cap
    cpu_features.has_bf16_gemm_isa.cache_clear()
