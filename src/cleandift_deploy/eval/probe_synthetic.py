"""A small known-truth set for the probes, from scikit-image's photographs.

Crops of the bundled photos get targets that are a known function of the pixels, so a probe on
image features can learn them: depth = 1 + 8 x (blurred luminance) metres; segmentation class =
blurred luminance below 0.35 / up to 0.6 / above (0, 1, 2), with pixels within 0.02 of a threshold
marked 255 (ignored); the kNN class is the photo a crop came from. Written in the NYU folder layout
(`nyu/`), VOC's layout (`voc/`) and the ImageFolder layout (`classes/`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic import atomic_path, write_text_atomic
from ..errors import CleanDiftError
from ..runtime.prediction_maps import voc_palette, write_millimetre_png
from .photoset import PHOTOS, load_photo
from .voc import IGNORE

THRESHOLDS = (0.35, 0.6)
BAND = 0.02


@dataclass(frozen=True)
class SyntheticCounts:
    """Images per split and side length."""

    train: int = 24
    test: int = 8
    size: int = 128


def blurred_luminance(rgb: np.ndarray) -> np.ndarray:
    """Luminance in [0, 1], Gaussian-blurred with sigma = side / 10 (coarse enough for a probe on a
    stride-16 tap to resolve)."""
    from scipy.ndimage import gaussian_filter

    grey = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
    return np.asarray(gaussian_filter(grey, sigma=max(rgb.shape[:2]) / 10, mode="nearest"))


def depth_of(rgb: np.ndarray) -> np.ndarray:
    """The synthetic depth in metres: 1 + 8 x blurred luminance (1..9 m)."""
    return 1.0 + 8.0 * blurred_luminance(rgb)


def labels_of(rgb: np.ndarray) -> np.ndarray:
    """The synthetic classes 0/1/2 by luminance, 255 in a band around each threshold."""
    lum = blurred_luminance(rgb)
    labels = np.digitize(lum, THRESHOLDS).astype(np.uint8)
    for threshold in THRESHOLDS:
        labels[np.abs(lum - threshold) < BAND] = IGNORE
    return labels


@lru_cache(maxsize=len(PHOTOS))
def _photo(name: str) -> Image.Image:
    return load_photo(name)


def random_crop(rng: np.random.Generator, size: int, index: int) -> tuple[str, np.ndarray]:
    """A random square crop of photo `index` (cycling through them, so every class of the kNN
    layout is in both splits once a split has six images), resized to `size`, maybe mirrored."""
    photo = PHOTOS[index % len(PHOTOS)]
    image = _photo(photo.name)
    side = int(min(image.size) * rng.uniform(0.4, 0.9))
    left = int(rng.integers(0, image.width - side + 1))
    top = int(rng.integers(0, image.height - side + 1))
    crop = image.crop((left, top, left + side, top + side)).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    pixels = np.asarray(crop, dtype=np.uint8)
    if rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    return photo.name, np.ascontiguousarray(pixels)


def _save(image: Image.Image, path: Path, fmt: str) -> None:
    with atomic_path(path) as temporary:
        image.save(temporary, format=fmt)


def make_probe_synthetic(root: Path, counts: SyntheticCounts, seed: int = 0) -> dict[str, Path]:
    """Write the three layouts under `root`; returns {"nyu": ..., "voc": ..., "classes": ...}."""
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise CleanDiftError(f"{root} is not empty: choose a new folder")
    if counts.size < 64 or counts.train < 1 or counts.test < 1:
        raise CleanDiftError("make-synthetic needs --size >= 64 and at least one image per split")
    rng = np.random.default_rng(seed)
    palette = voc_palette()
    folders = {"nyu": root / "nyu", "voc": root / "voc", "classes": root / "classes"}
    splits = {"train": ("train", counts.train), "test": ("val", counts.test)}
    for nyu_split, (voc_split, count) in splits.items():
        names = []
        for index in range(count):
            photo, pixels = random_crop(rng, counts.size, index)
            name = f"{nyu_split}_{index:04d}"
            names.append(name)
            image = Image.fromarray(pixels)
            _save(image, folders["nyu"] / nyu_split / "rgb" / f"{name}.png", "PNG")
            write_millimetre_png(
                folders["nyu"] / nyu_split / "depth" / f"{name}.png", depth_of(pixels)
            )
            _save(image, folders["voc"] / "JPEGImages" / f"{name}.jpg", "JPEG")
            labels = Image.fromarray(labels_of(pixels), mode="P")
            labels.putpalette(palette)
            _save(labels, folders["voc"] / "SegmentationClass" / f"{name}.png", "PNG")
            _save(image, folders["classes"] / voc_split / photo / f"{name}.png", "PNG")
        listing = folders["voc"] / "ImageSets" / "Segmentation" / f"{voc_split}.txt"
        write_text_atomic(listing, "\n".join(names) + "\n")
    return folders
