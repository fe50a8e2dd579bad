"""Synthetic image pairs with known correspondences: a textured image and an affine warp of it.

With no data sets downloadable here, these give matching a ground truth to be scored against.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass
class WarpedPair:
    """Two images and the affine map (target pixel = A @ source pixel + b) between them."""

    source: Image.Image
    target: Image.Image
    matrix: np.ndarray
    offset: np.ndarray

    def map_points(self, points: np.ndarray) -> np.ndarray:
        """Where source (x, y) pixels land in the target."""
        return points @ self.matrix.T + self.offset


def textured_image(size: int, rng: np.random.Generator, blobs: int = 40) -> Image.Image:
    """An RGB image of coloured Gaussian blobs on a gradient: structure at several scales."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    canvas = np.stack([xx, yy, 1 - xx], axis=-1) * 0.3
    for _ in range(blobs):
        cx, cy = rng.random(2)
        radius = rng.uniform(0.02, 0.15)
        weight = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * radius**2))
        canvas += weight[..., None] * rng.uniform(-0.8, 0.8, size=3)
    return Image.fromarray((np.clip(canvas, 0, 1) * 255).astype(np.uint8))


def warped_pair(
    size: int = 256, angle_deg: float = 10.0, scale: float = 1.1, seed: int = 0
) -> WarpedPair:
    """A textured image and its rotation/scaling about the centre, with the exact mapping."""
    rng = np.random.default_rng(seed)
    source = textured_image(size, rng)
    theta = np.deg2rad(angle_deg)
    matrix = scale * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    centre = np.array([size / 2, size / 2])
    offset = centre - matrix @ centre
    inverse = np.linalg.inv(matrix)
    inverse_offset = -inverse @ offset
    coefficients = (*inverse[0], inverse_offset[0], *inverse[1], inverse_offset[1])
    target = source.transform(
        (size, size), Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR
    )
    return WarpedPair(source, target, matrix, offset)


def visible_points(pair: WarpedPair, count: int, seed: int = 0, margin: int = 16) -> np.ndarray:
    """Source points whose mapped location stays inside the target, away from the border."""
    rng = np.random.default_rng(seed)
    width, height = pair.source.size
    candidates = rng.uniform(margin, [width - margin, height - margin], size=(count * 8, 2))
    mapped = pair.map_points(candidates)
    tw, th = pair.target.size
    inside = (
        (mapped >= margin).all(axis=1) & (mapped[:, 0] < tw - margin) & (mapped[:, 1] < th - margin)
    )
    return candidates[inside][:count].astype(np.float32)
