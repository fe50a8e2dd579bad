"""Random homographies and photometric changes, with the exact point map.

Points are (x, y) with pixel (i, j) centred at x = j, y = i (as everywhere in the toolkit).
Pillow's transforms work in pixel-corner coordinates (centre at +0.5), so the matrix handed to
Pillow is the inverse map conjugated by that half-pixel shift; `warp_image` and `map_points` then
agree exactly, which the tests check by warping coordinate ramps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

MAX_ROTATION_DEG = 30.0
SCALE_RANGE = (0.7, 1.4)
PERSPECTIVE = 0.25
"""Largest change of the projective denominator across half the image (mild perspective)."""
SHIFT = 0.1
"""Largest translation, as a fraction of the image size."""


@dataclass(frozen=True)
class Warp:
    """A homography (3x3, target = H @ source in homogeneous pixel-centre coordinates) and the
    parameters it was drawn from."""

    matrix: np.ndarray
    angle_deg: float
    scale: float


def random_homography(size: tuple[int, int], rng: np.random.Generator) -> Warp:
    """Rotation up to +-30 deg and scale 0.7-1.4 about the centre, mild perspective, a shift."""
    width, height = size
    centre = np.array([[1, 0, (width - 1) / 2], [0, 1, (height - 1) / 2], [0, 0, 1]])
    angle = rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG)
    scale = rng.uniform(*SCALE_RANGE)
    theta = np.deg2rad(angle)
    similarity = np.diag([scale, scale, 1.0]) @ np.array(
        [[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]]
    )
    half = max(width, height) / 2
    projective = np.eye(3)
    projective[2, :2] = rng.uniform(-PERSPECTIVE, PERSPECTIVE, size=2) / half
    shift = np.eye(3)
    shift[:2, 2] = rng.uniform(-SHIFT, SHIFT, size=2) * np.array([width, height])
    matrix = shift @ centre @ projective @ similarity @ np.linalg.inv(centre)
    return Warp(matrix / matrix[2, 2], float(angle), float(scale))


def map_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """[K,2] (x, y) points through a homography."""
    homogeneous = np.concatenate([points, np.ones((len(points), 1))], axis=1) @ matrix.T
    return homogeneous[:, :2] / homogeneous[:, 2:3]


def pillow_coefficients(matrix: np.ndarray) -> tuple[float, ...]:
    """The 8 coefficients Pillow's PERSPECTIVE transform needs for `matrix` (target -> source
    in pixel-corner coordinates)."""
    half = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
    inverse = half @ np.linalg.inv(matrix) @ np.linalg.inv(half)
    inverse = inverse / inverse[2, 2]
    return tuple(float(v) for v in inverse.flatten()[:8])


def warp_image(image: Image.Image, matrix: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """`image` seen through the homography on a (W, H) canvas; outside the source is black."""
    return image.transform(
        size, Image.Transform.PERSPECTIVE, pillow_coefficients(matrix), Image.Resampling.BILINEAR
    )


def inside(points: np.ndarray, size: tuple[int, int], margin: float = 0.0) -> np.ndarray:
    """Which (x, y) points lie within a (W, H) image, `margin` pixels from its border."""
    width, height = size
    return (
        (points[:, 0] >= margin)
        & (points[:, 1] >= margin)
        & (points[:, 0] <= width - 1 - margin)
        & (points[:, 1] <= height - 1 - margin)
    )


def photometric(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Random brightness, contrast, hue, blur and noise: appearance changes, geometry kept."""
    image = ImageEnhance.Brightness(image).enhance(rng.uniform(0.7, 1.3))
    image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.7, 1.3))
    hsv = np.asarray(image.convert("HSV")).copy()
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(rng.integers(-12, 13))) % 256
    image = Image.fromarray(hsv, "HSV").convert("RGB")
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.2)))
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(
        0, rng.uniform(0, 8), (image.height, image.width, 3)
    )
    return Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8))
