"""Feature-PCA pictures: distinct feature clusters get distinct colours; padding stays black."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cleandift_deploy.errors import CleanDiftError
from cleandift_deploy.runtime.extract_files import covered_cells
from cleandift_deploy.runtime.pca import pca_rgb, save_pca_picture
from cleandift_deploy.runtime.preprocess import Placement


def _two_regions(channels: int = 32, height: int = 8, width: int = 12) -> torch.Tensor:
    """Left half one random feature vector, right half another, plus small noise."""
    left, right = torch.randn(channels), torch.randn(channels)
    features = torch.empty(channels, height, width)
    features[:, :, : width // 2] = left[:, None, None]
    features[:, :, width // 2 :] = right[:, None, None]
    return features + 0.01 * torch.randn_like(features)


def test_clusters_get_distinct_colours() -> None:
    picture = pca_rgb(_two_regions()).astype(float)
    left, right = picture[:, :6], picture[:, 6:]
    gaps = np.abs(left.mean(axis=(0, 1)) - right.mean(axis=(0, 1)))
    main = int(gaps.argmax())
    assert gaps[main] > 150, "the main component must separate the two regions"
    assert left[..., main].std() < 20 and right[..., main].std() < 20, "each region is uniform"


def test_saved_picture_has_the_image_size(tmp_path: Path) -> None:
    path = tmp_path / "pca.png"
    save_pca_picture(_two_regions(), path, (64, 96))
    with Image.open(path) as saved:
        assert saved.size == (96, 64) and saved.mode == "RGB"
    with pytest.raises(CleanDiftError, match="PCA needs"):
        pca_rgb(torch.randn(2, 4, 4))


@pytest.mark.parametrize(
    ("placement", "window"),
    [
        (Placement((60, 150), (64, 64)), (0, 8, 0, 8)),  # squash: the whole canvas
        (Placement((60, 150), (26, 64)), (0, 4, 0, 8)),  # pad: the top-left part
        (Placement((60, 150), (26, 64), (19, 0)), (2, 6, 0, 8)),  # letterbox: the band between
    ],
)
def test_only_the_cells_the_image_covers_are_pictured(
    placement: Placement, window: tuple[int, int, int, int]
) -> None:
    features = torch.randn(4, 8, 8)
    top, bottom, left, right = window
    assert torch.equal(covered_cells(features, 8, placement), features[:, top:bottom, left:right])
