"""Pascal VOC 2012 segmentation: `JPEGImages/ID.jpg`, palette PNGs `SegmentationClass/ID.png`
(class index per pixel, 255 = boundary / ignore), `ImageSets/Segmentation/{train,val}.txt`.
21 classes including background."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import CleanDiftError
from .dense_samples import DenseSample

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
IGNORE = 255


def read_label_png(path: Path, classes: int) -> np.ndarray:
    """Class indices of a palette (or greyscale) PNG; values other than 0..classes-1 and 255
    are refused with the file and the value."""
    try:
        with Image.open(path) as image:
            mode = image.mode
            labels = np.asarray(image)
    except (OSError, ValueError) as err:
        raise CleanDiftError(f"{path}: cannot read the label map ({err})") from None
    if mode not in ("P", "L") or labels.ndim != 2:
        raise CleanDiftError(
            f"{path}: labels must be a palette or greyscale PNG of class indices, found mode {mode}"
        )
    bad = labels[(labels >= classes) & (labels != IGNORE)]
    if bad.size:
        raise CleanDiftError(
            f"{path}: label value {int(bad.max())} outside 0..{classes - 1} and not {IGNORE}"
        )
    return labels.astype(np.uint8)


def load_voc(
    root: Path, split: str = "val", limit: int | None = None, classes: int = len(VOC_CLASSES)
) -> list[DenseSample]:
    """The split's samples (ids from ImageSets/Segmentation/SPLIT.txt)."""
    root = Path(root)
    listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not listing.is_file():
        raise CleanDiftError(
            f"{listing} does not exist: give the VOC2012 folder (JPEGImages, SegmentationClass, "
            "ImageSets/Segmentation)"
        )
    ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    if not ids:
        raise CleanDiftError(f"{listing} lists no images")
    samples = []
    for name in ids[:limit] if limit is not None else ids:
        image = root / "JPEGImages" / f"{name}.jpg"
        label = root / "SegmentationClass" / f"{name}.png"
        for path in (image, label):
            if not path.is_file():
                raise CleanDiftError(f"{listing}: {name} has no {path}")
        samples.append(DenseSample(name, image, partial(read_label_png, label, classes)))
    return samples
