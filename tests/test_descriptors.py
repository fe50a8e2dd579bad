"""Descriptors: co-PCA against a float64 SVD reference, fitted bases, part-wise normalisation,
fused nearest neighbours against brute force, and the presets' assembly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cleandift_deploy.descriptors import (
    PcaBasis,
    co_pca,
    co_pca_maps,
    describe,
    describe_pair,
    load_bases,
    normalise_parts,
    progressive_concat,
    save_bases,
)
from cleandift_deploy.errors import CleanDiftError
from cleandift_deploy.kernels import match_dense
from cleandift_deploy.methods.catalog import PRESETS, get_preset


def _spread_rows(n: int, c: int) -> torch.Tensor:
    """Rows with well-separated principal values (components are then unique up to sign)."""
    scales = torch.linspace(3.0, 0.2, c) ** 2
    return torch.randn(n, c) * scales + torch.randn(c) * 2.0


def _reference(a: torch.Tensor, b: torch.Tensor, q: int) -> tuple[np.ndarray, np.ndarray]:
    joint = np.concatenate([a.numpy(), b.numpy()]).astype(np.float64)
    centred = joint - joint.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return vt[:q], centred @ vt[:q].T


def test_co_pca_matches_float64_svd_subspace_and_projections() -> None:
    a, b = _spread_rows(90, 24), _spread_rows(70, 24)
    pa, pb = co_pca(a, b, dims=10)
    components, projections = _reference(a, b, 10)
    ours = torch.cat([pa, pb]).double().numpy()
    assert ours.shape == (160, 10)
    signs = np.sign(np.sum(ours * projections, axis=0))
    assert np.all(signs != 0)
    np.testing.assert_allclose(ours, projections * signs, atol=2e-5 * np.abs(projections).max())
    # subspace: the projector onto our components equals the reference projector
    centred = torch.cat([a, b]).double() - torch.cat([a, b]).double().mean(0)
    basis = np.linalg.lstsq(centred.numpy(), ours, rcond=None)[0]
    basis /= np.linalg.norm(basis, axis=0, keepdims=True)
    np.testing.assert_allclose(basis @ basis.T, components.T @ components, atol=1e-6)


def test_co_pca_is_deterministic_with_a_sign_convention() -> None:
    a, b = _spread_rows(60, 16), _spread_rows(40, 16)
    first = co_pca(a, b, 8)
    again = co_pca(a.clone(), b.clone(), 8)
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    flipped = co_pca(-a, -b, 8)  # same subspace; the sign convention fixes the components
    torch.testing.assert_close(flipped[0], -first[0], rtol=1e-5, atol=1e-5)


def test_lowrank_option_spans_the_same_subspace_on_low_rank_data() -> None:
    mixing = torch.randn(6, 32) * 3.0
    a, b = torch.randn(80, 6) @ mixing, torch.randn(80, 6) @ mixing
    exact = torch.cat(co_pca(a, b, 6)).double()
    lowrank = torch.cat(co_pca(a, b, 6, method="lowrank", seed=3)).double()
    # both are the same centred data in two orthonormal bases of one subspace: equal Gram
    gram = exact @ exact.T
    tolerance = 1e-5 * float(gram.abs().max())
    torch.testing.assert_close(lowrank @ lowrank.T, gram, rtol=0, atol=tolerance)
    again = torch.cat(co_pca(a, b, 6, method="lowrank", seed=3))
    assert torch.equal(again, lowrank.float())


def test_co_pca_clamps_components_to_the_rank_available() -> None:
    a, b = torch.randn(3, 12), torch.randn(2, 12)
    pa, pb = co_pca(a, b, dims=256)
    assert pa.shape == (3, 5) and pb.shape == (2, 5)
    with pytest.raises(CleanDiftError, match="channels"):
        co_pca(torch.randn(4, 8), torch.randn(4, 9), 2)
    with pytest.raises(CleanDiftError, match="NaN"):
        co_pca(torch.full((4, 8), float("nan")), torch.randn(4, 8), 2)


def test_fitted_basis_round_trips_and_equals_co_pca_on_its_own_data(tmp_path: Path) -> None:
    a, b = torch.randn(8, 5, 6) * torch.linspace(2, 0.1, 8)[:, None, None], torch.randn(8, 4, 5)
    rows = torch.cat([a.reshape(8, -1).T, b.reshape(8, -1).T])
    basis = PcaBasis.fit(rows, 4)
    path = tmp_path / "bases.safetensors"
    save_bases(path, {"us8": basis})
    loaded = load_bases(path)["us8"]
    assert torch.equal(loaded.components, basis.components)
    pa, _ = co_pca_maps(a, b, 4)
    torch.testing.assert_close(loaded.project_map(a), pa, rtol=1e-5, atol=1e-5)
    with pytest.raises(CleanDiftError, match="channels"):
        loaded.project(torch.randn(3, 9))


def test_part_norms_follow_the_weights() -> None:
    sd, dino = torch.randn(20, 6, 7) * 5, torch.randn(12, 6, 7) * 0.1
    fused = normalise_parts([sd, dino], (0.6, 0.8))
    assert fused.shape == (32, 6, 7)
    torch.testing.assert_close(fused[:20].norm(dim=0), torch.full((6, 7), 0.6))
    torch.testing.assert_close(fused[20:].norm(dim=0), torch.full((6, 7), 0.8))
    again = normalise_parts([sd, dino], (1.0, 3.0), renormalise=True)
    torch.testing.assert_close(again.norm(dim=0), torch.ones(6, 7))
    ratio = again[20:].norm(dim=0) / again[:20].norm(dim=0)
    torch.testing.assert_close(ratio, torch.full((6, 7), 3.0))
    with pytest.raises(CleanDiftError, match="different grids"):
        normalise_parts([sd, torch.randn(3, 5, 5)])


@pytest.mark.parametrize("renormalise", [False, True])
def test_fused_nearest_neighbours_equal_brute_force(renormalise: bool) -> None:
    weights = (1.0, 0.7)
    parts_src = [torch.randn(40, 9, 9), torch.randn(16, 9, 9)]
    parts_tgt = [torch.randn(40, 8, 10), torch.randn(16, 8, 10)]
    src = normalise_parts(parts_src, weights, renormalise).reshape(56, -1).T
    tgt = normalise_parts(parts_tgt, weights, renormalise).reshape(56, -1).T
    fused = match_dense(src, tgt).indices[:, 0]
    score = torch.zeros(81, 80, dtype=torch.float64)
    for w, ps, pt in zip(weights, parts_src, parts_tgt, strict=True):
        a = F.normalize(ps.reshape(ps.shape[0], -1).T.double(), dim=1)
        b = F.normalize(pt.reshape(pt.shape[0], -1).T.double(), dim=1)
        score += w**2 * a @ b.T
    assert torch.equal(fused, score.argmax(dim=1))


def _taps(scale: int) -> dict[str, torch.Tensor]:
    return {
        "us8": torch.randn(10, 4 * scale, 4 * scale),
        "us5": torch.randn(20, 2 * scale, 2 * scale),
        "us2": torch.randn(20, scale, scale),
        "us6": torch.randn(20, 4 * scale, 4 * scale),
    }


def test_sd_dino_pair_assembly() -> None:
    preset = get_preset("sd-dino")
    taps_a, taps_b, dino_a, dino_b = (
        _taps(2),
        _taps(2),
        torch.randn(12, 8, 8),
        torch.randn(12, 8, 8),
    )
    da, db = describe_pair(preset, taps_a, taps_b, dino_a, dino_b)
    # co-PCA keeps min(256, tokens of both, channels) per layer: 10, 20 and 8 (2x2 grids x 2)
    assert da.shape == (10 + 20 + 8 + 12, 8, 8) and db.shape == da.shape
    torch.testing.assert_close(da[:38].norm(dim=0), torch.ones(8, 8))
    torch.testing.assert_close(da[38:].norm(dim=0), torch.ones(8, 8))
    s3, s4, s5 = (co_pca_maps(taps_a[t], taps_b[t], 256)[0] for t in ("us8", "us5", "us2"))
    s45 = F.interpolate(
        torch.cat([s4, F.interpolate(s5[None], size=(4, 4), mode="bilinear")[0]])[None],
        size=(8, 8),
        mode="bilinear",
    )[0]
    torch.testing.assert_close(progressive_concat([s3, s4, s5]), torch.cat([s3, s45]))
    with pytest.raises(CleanDiftError, match="describe_pair"):
        describe(preset, taps_a, dino_a)


def test_geoaware_and_dift_assembly() -> None:
    taps, dino = _taps(2), torch.randn(12, 8, 8)
    geo = describe(PRESETS["geoaware"], taps, dino)
    assert geo.shape == (10 + 20 + 20 + 12, 8, 8)
    torch.testing.assert_close(geo.norm(dim=0), torch.ones(8, 8))
    torch.testing.assert_close(geo[:50].norm(dim=0), torch.full((8, 8), 0.5**0.5))
    up = F.interpolate(taps["us2"][None], size=(8, 8), mode="bilinear")[0]
    sd = torch.cat([taps["us8"], F.interpolate(taps["us5"][None], size=(8, 8), mode="bilinear")[0]])
    sd = torch.cat([sd, up])
    torch.testing.assert_close(geo[30:50], (sd / sd.norm(dim=0))[30:50] * 0.5**0.5)
    assert torch.equal(describe(PRESETS["dift"], taps), taps["us6"])
    with pytest.raises(CleanDiftError, match="lacks us8"):
        describe(PRESETS["geoaware"], {"us6": taps["us6"]}, dino)
    with pytest.raises(CleanDiftError, match="DINOv2 model"):
        describe(PRESETS["geoaware"], taps, None)
