"""Query-point matching: exact-upsampled matcher against upsample-then-match."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cleandift_deploy.kernels import match_points
from cleandift_deploy.kernels.geometry import bilinear_axis
from cleandift_deploy.kernels.oracles import reference_match_points
from cleandift_deploy.kernels.target_field import neighbour_grams, upsampled_inverse_norms

# (src map, src image, tgt map, tgt image): odd, non-square, up- and down-scaling
CASES = [
    ((9, 13), (70, 101), (11, 7), (123, 50)),
    ((12, 12), (96, 96), (12, 12), (200, 150)),
    ((6, 5), (6, 5), (10, 6), (8, 5)),
]


def random_points(k: int, size: tuple[int, int]) -> torch.Tensor:
    h, w = size
    pts = torch.stack([torch.rand(k) * (w - 1), torch.rand(k) * (h - 1)], dim=1)
    corners = torch.tensor([[0.0, 0.0], [w - 1.0, h - 1.0], [w - 0.51, -0.5]])
    return torch.cat([pts, corners])


def assert_agrees(got, want) -> None:
    """>= 99.9% identical matches; any other match within 1e-5 in score; scores within 1e-5."""
    same = (got.points == want.points).all(dim=1)
    assert (~same).sum() <= int(0.001 * len(same))
    assert torch.allclose(got.scores, want.scores, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("n_in", "n_out"), [(48, 768), (48, 500), (48, 375), (7, 3), (1, 9), (5, 5)]
)
def test_axis_weights_are_torch_bilinear(n_in: int, n_out: int) -> None:
    basis = torch.eye(n_in)[None, :, :, None]
    want = F.interpolate(basis, size=(n_out, 1), mode="bilinear", align_corners=False)
    got = bilinear_axis(n_in, n_out).matrix(n_in)
    assert torch.allclose(got, want[0, :, :, 0].T, atol=2e-7, rtol=0)


def test_upsampled_norms_from_gram_entries() -> None:
    t = torch.randn(32, 9, 13)
    t[:, 4, 4] = 0
    ay, ax = bilinear_axis(9, 70), bilinear_axis(13, 101)
    got = upsampled_inverse_norms(neighbour_grams(t.double()), ay, ax).double()
    up = torch.einsum("yh,chw,xw->cyx", ay.matrix(9).double(), t.double(), ax.matrix(13).double())
    want = up.norm(dim=0).clamp_min(1e-12).reciprocal()
    assert torch.allclose(got, want, rtol=1e-6, atol=0)


@pytest.mark.parametrize(("src_map", "src_img", "tgt_map", "tgt_img"), CASES)
@pytest.mark.parametrize("channels", [3, 64])
def test_bilinear_nn_matches_upsample_then_match(src_map, src_img, tgt_map, tgt_img, channels):
    src, tgt = torch.randn(channels, *src_map), torch.randn(channels, *tgt_map)
    pts = random_points(300, src_img)
    got = match_points(src, tgt, pts, src_img, tgt_img)
    want = reference_match_points(src, tgt, pts, src_img, tgt_img)
    assert_agrees(got, want)


@pytest.mark.parametrize(("src_map", "src_img", "tgt_map", "tgt_img"), CASES[:2])
def test_coarse_nn_is_exact(src_map, src_img, tgt_map, tgt_img) -> None:
    src, tgt = torch.randn(16, *src_map), torch.randn(16, *tgt_map)
    pts = random_points(200, src_img)
    got = match_points(src, tgt, pts, src_img, tgt_img, upsample="none")
    want = reference_match_points(src, tgt, pts, src_img, tgt_img, upsample="none")
    assert torch.equal(got.points, want.points)
    assert torch.allclose(got.scores, want.scores, atol=1e-6, rtol=0)


@pytest.mark.parametrize("upsample", ["bilinear", "none"])
def test_window_softargmax_matches_reference(upsample: str) -> None:
    src, tgt = torch.randn(32, 9, 13), torch.randn(32, 11, 7)
    pts = random_points(60, (70, 101))
    kw = {"upsample": upsample, "mode": "window-softargmax", "radius": 2, "beta": 0.02}
    got = match_points(src, tgt, pts, (70, 101), (123, 50), **kw)
    want = reference_match_points(src, tgt, pts, (70, 101), (123, 50), **kw)
    assert torch.allclose(got.points, want.points, atol=1e-3, rtol=0)
    assert torch.allclose(got.scores, want.scores, atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_feature_maps(dtype: torch.dtype) -> None:
    src, tgt = torch.randn(64, 12, 12).to(dtype), torch.randn(64, 10, 14).to(dtype)
    pts = random_points(100, (96, 96))
    got = match_points(src, tgt, pts, (96, 96), (80, 112))
    want = reference_match_points(src.float(), tgt.float(), pts, (96, 96), (80, 112))
    assert_agrees(got, want)


def test_exact_ties_resolve_to_the_first_pixel() -> None:
    tgt = torch.randn(8, 6, 7)
    # pixels past the last cell centre are exact copies of the corner cell: all score 1.0
    pts = torch.tensor([[39.0, 47.0]])
    got = match_points(tgt.clone(), tgt, pts, (48, 40), (48, 40))
    ay, ax = bilinear_axis(6, 48), bilinear_axis(7, 40)
    first_y = int((ay.i0 == 5).nonzero()[0])
    first_x = int((ax.i0 == 6).nonzero()[0])
    assert got.points.tolist() == [[first_x, first_y]]
    assert abs(float(got.scores[0]) - 1.0) < 1e-6
    tgt[:, 4, 1] = tgt[:, 2, 3]  # duplicate cells on the coarse grid: the first one wins
    pts = torch.tensor([[3 * 40 / 7 + 2.0, 2 * 48 / 6 + 2.0]])
    got = match_points(tgt.clone(), tgt, pts, (48, 40), (48, 40), upsample="none")
    want = torch.tensor([[3.5 * 40 / 7 - 0.5, 2.5 * 48 / 6 - 0.5]])
    assert torch.allclose(got.points, want)


def test_zero_vectors_have_zero_cosine() -> None:
    src, tgt = torch.randn(8, 6, 6), torch.randn(8, 6, 6)
    tgt[:, :, 4] = 0
    pts = random_points(50, (48, 48))
    got = match_points(src, tgt, pts, (48, 48), (40, 40))
    want = reference_match_points(src, tgt, pts, (48, 48), (40, 40))
    # a zero column makes whole strips of pixels tie (w * t has t's cosine): compare scores
    assert torch.isfinite(got.scores).all()
    assert torch.allclose(got.scores, want.scores, atol=1e-5, rtol=0)
    got = match_points(torch.zeros_like(src), tgt, pts, (48, 48), (40, 40))
    assert torch.equal(got.scores, torch.zeros(len(pts)))
    assert torch.equal(got.points, torch.zeros(len(pts), 2))


@pytest.mark.slow
def test_sd21_sizes_agree_with_upsample_then_match() -> None:
    src, tgt = torch.randn(1280, 48, 48), torch.randn(1280, 48, 48)
    pts = random_points(1000, (768, 768))
    got = match_points(src, tgt, pts, (768, 768), (500, 375))
    want = reference_match_points(src, tgt, pts, (768, 768), (500, 375))
    assert_agrees(got, want)


@pytest.mark.parametrize("noise", [1e-2, 1e-4, 0.0])
def test_smooth_maps_never_miss_the_best_score(noise: float) -> None:
    """Upsampled coarse maps make neighbourhood Gram matrices (near-)singular, where the
    projection bound is disabled; the best score must still be found. Exact upsampling creates
    genuine ties, so only scores are compared (and positions when the maps are noisy)."""

    def smooth() -> torch.Tensor:
        coarse = F.interpolate(torch.randn(1, 32, 4, 4), size=(12, 12), mode="bilinear")
        return coarse[0] + noise * torch.randn(32, 12, 12)

    src, tgt = smooth(), smooth()
    pts = random_points(300, (96, 96))
    got = match_points(src, tgt, pts, (96, 96), (96, 96))
    want = reference_match_points(src, tgt, pts, (96, 96), (96, 96))
    assert torch.allclose(got.scores, want.scores, atol=1e-6, rtol=0)
    if noise >= 1e-2:
        assert_agrees(got, want)


@pytest.mark.parametrize(("src_map", "src_img", "tgt_map", "tgt_img"), CASES)
def test_score_map_is_the_upsampled_cosine_map(src_map, src_img, tgt_map, tgt_img) -> None:
    """score_map = DIFT's heatmap (upsample, normalise, dot); its maximum is match_points' score."""
    from cleandift_deploy.kernels.query import score_map, source_vectors
    from cleandift_deploy.kernels.target_field import prepare_target

    src, tgt = torch.randn(16, *src_map), torch.randn(16, *tgt_map)
    point = random_points(1, src_img)[:1]
    query = source_vectors(src, point, src_img, "bilinear")
    got = score_map(prepare_target(tgt, tgt_img, "bilinear"), query[0])
    up_tgt = F.normalize(F.interpolate(tgt[None], tgt_img, mode="bilinear"), dim=1)[0]
    want = torch.einsum("c,chw->hw", query[0], up_tgt)
    assert got.shape == tgt_img and torch.allclose(got, want, atol=1e-5)
    found = match_points(src, tgt, point, src_img, tgt_img)
    assert abs(float(got.max()) - float(found.scores[0])) < 1e-5
