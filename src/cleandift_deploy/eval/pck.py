"""PCK: the share of predicted keypoints within a threshold of the ground truth."""

from __future__ import annotations

import numpy as np


def pck(predicted: np.ndarray, truth: np.ndarray, threshold: float) -> float:
    """Fraction of points with `||predicted - truth|| <= threshold` (pixels).

    SPair-71k reports PCK@0.1 with `threshold = 0.1 * max(bbox height, bbox width)`.
    """
    if predicted.shape != truth.shape or predicted.ndim != 2 or predicted.shape[1] != 2:
        raise ValueError(f"need two [K,2] arrays; got {predicted.shape} and {truth.shape}")
    if len(truth) == 0:
        raise ValueError("no keypoints to score")
    distances = np.linalg.norm(predicted - truth, axis=1)
    return float((distances <= threshold).mean())
