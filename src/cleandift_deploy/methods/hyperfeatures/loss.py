"""The training loss: symmetric CLIP-style cross-entropy over keypoint correspondences.

As diffusion-hyperfeatures `compute_clip_loss`: cosine similarity of every source position with
every target position, times exp(logit_scale) with logit_scale = log(1/0.07) fixed (tau = 0.07);
cross-entropy from each source keypoint's row to its target keypoint's index and the reverse,
averaged. Keypoints index the map at round(y) * w + round(x).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

TEMPERATURE = 0.07


def point_indices(points: np.ndarray, height: int, width: int) -> torch.Tensor:
    """Flat indices of (x, y) map coordinates, rounded and clamped onto the grid."""
    cells = np.rint(np.asarray(points, dtype=np.float64))
    x = np.clip(cells[:, 0], 0, width - 1).astype(np.int64)
    y = np.clip(cells[:, 1], 0, height - 1).astype(np.int64)
    return torch.from_numpy(y * width + x)


def cosine_logits(source: torch.Tensor, target: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`[K, h*w]`: cosine of the source map's positions `rows` with every target position / tau."""
    src = F.normalize(source.flatten(1)[:, rows].T, dim=1)
    trg = F.normalize(target.flatten(1), dim=0)
    return (src @ trg) / TEMPERATURE


def clip_loss(
    source: torch.Tensor,
    target: torch.Tensor,
    source_points: np.ndarray,
    target_points: np.ndarray,
) -> torch.Tensor:
    """Symmetric cross-entropy for one pair of `[C,h,w]` maps and aligned map-cell keypoints."""
    height, width = source.shape[-2:]
    src_idx = point_indices(source_points, height, width).to(source.device)
    trg_idx = point_indices(target_points, height, width).to(source.device)
    forward = F.cross_entropy(cosine_logits(source, target, src_idx), trg_idx)
    backward = F.cross_entropy(cosine_logits(target, source, trg_idx), src_idx)
    return (forward + backward) / 2
