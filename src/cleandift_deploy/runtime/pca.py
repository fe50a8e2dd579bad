"""Feature pictures: the three principal components of a feature map shown as RGB.

Similar features get similar colours, so one glance shows whether a model separates parts of an
object (and whether two backends agree) far better than a table of numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..atomic import atomic_path
from ..errors import CleanDiftError

CLIP_PERCENT = 1.0
"""Components are stretched between their 1st and 99th percentiles, so outliers do not dominate."""


def pca_rgb(features: torch.Tensor, content: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 [h, w, 3] picture of a [C, h, w] map; only the `content` (h, w) cells are fitted."""
    if features.ndim != 3 or features.shape[0] < 3:
        raise CleanDiftError(f"PCA needs a [C>=3, h, w] map; got shape {tuple(features.shape)}")
    channels, height, width = features.shape
    rows, cols = content or (height, width)
    cells = features[:, :rows, :cols].reshape(channels, -1).T.double()
    centred = cells - cells.mean(dim=0)
    _, _, components = torch.linalg.svd(centred, full_matrices=False)
    projected = (centred @ components[:3].T).numpy()
    low, high = np.percentile(projected, [CLIP_PERCENT, 100 - CLIP_PERCENT], axis=0)
    scaled = np.clip((projected - low) / np.maximum(high - low, 1e-12), 0.0, 1.0)
    picture = np.zeros((height, width, 3), dtype=np.uint8)
    picture[:rows, :cols] = np.rint(scaled * 255).astype(np.uint8).reshape(rows, cols, 3)
    return picture


def save_pca_picture(
    features: torch.Tensor,
    path: Path,
    size: tuple[int, int],
    content: tuple[int, int] | None = None,
) -> None:
    """Write the PCA picture of a [C, h, w] map as a PNG of `size` (H, W), cells as blocks."""
    picture = Image.fromarray(pca_rgb(features.detach().float().cpu(), content))
    resized = picture.resize((size[1], size[0]), Image.Resampling.NEAREST)
    with atomic_path(path) as temporary:
        resized.save(temporary, format="PNG")
