"""Synthetic pairs carry their true correspondences; PCK counts within a threshold."""

from __future__ import annotations

import numpy as np
import pytest

from cleandift_deploy.eval import pck, visible_points, warped_pair


def test_warp_maps_source_pixels_onto_the_same_content() -> None:
    pair = warped_pair(size=128, angle_deg=15, scale=1.2, seed=3)
    points = visible_points(pair, 50, seed=1, margin=12)
    assert len(points) == 50
    mapped = pair.map_points(points)
    src, tgt = np.asarray(pair.source, dtype=np.float32), np.asarray(pair.target, dtype=np.float32)
    at_source = src[points[:, 1].round().astype(int), points[:, 0].round().astype(int)]
    at_target = tgt[mapped[:, 1].round().astype(int), mapped[:, 0].round().astype(int)]
    wrong = tgt[(mapped[:, 1].round().astype(int) + 40) % 128, mapped[:, 0].round().astype(int)]
    assert np.abs(at_source - at_target).mean() < 0.25 * np.abs(at_source - wrong).mean()


def test_pck_counts_points_within_the_threshold() -> None:
    truth = np.random.default_rng(0).uniform(0, 100, size=(10, 2))
    predicted = truth.copy()
    predicted[:3] += 20.0
    predicted[3] += 1.0
    assert pck(predicted, truth, threshold=5.0) == pytest.approx(0.7)
    with pytest.raises(ValueError, match=r"\[K,2\]"):
        pck(predicted[:, :1], truth[:, :1], 1.0)
