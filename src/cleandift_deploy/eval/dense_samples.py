"""What the dense-prediction readers return: one image and its per-pixel target, loaded lazily.

Depth targets are float32 metres (0 = no measurement); segmentation targets are uint8 class
indices (255 = ignore). Images are uint8 [H, W, 3]. A sample read from a file of its own is
cached by that file's hash; one stored inside a bigger file (NYUv2's .mat) by its pixels' hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import CleanDiftError
from ..runtime.images import read_image
from ..runtime.prediction_maps import MAX_MILLIMETRES


@dataclass(frozen=True)
class DenseSample:
    """One image, its target and the name outputs are written under."""

    name: str
    image_path: Path
    """The image file, or the container file for images stored inside one."""
    read_target: Callable[[], np.ndarray]
    read_pixels: Callable[[], np.ndarray] | None = None
    """For images inside a container: returns uint8 [H, W, 3] (else the file is decoded)."""

    def image(self) -> np.ndarray:
        """uint8 [H, W, 3]."""
        return read_image(self.image_path) if self.read_pixels is None else self.read_pixels()

    def target(self) -> np.ndarray:
        """Depth in metres (float32) or class indices (uint8), [H, W]."""
        return self.read_target()

    def image_hash(self) -> str | None:
        """The pixels' sha256 for images inside a container (None: hash the file)."""
        if self.read_pixels is None:
            return None
        return hashlib.sha256(np.ascontiguousarray(self.read_pixels()).tobytes()).hexdigest()


def read_millimetre_png(path: Path, max_depth: float) -> np.ndarray:
    """A 16-bit PNG of depth in millimetres as float32 metres, with a range check.

    8-bit files are refused (they cannot hold millimetres); a map whose largest value is below
    20 looks like metres written as integers and is refused with the fix. Depth beyond
    `max_depth` metres becomes 0 (invalid), as probe3d does.
    """
    try:
        with Image.open(path) as image:
            mode = image.mode
            values = np.asarray(image)
    except (OSError, ValueError) as err:
        raise CleanDiftError(f"{path}: cannot read the depth map ({err})") from None
    if mode not in ("I;16", "I;16B", "I;16L", "I") or values.ndim != 2:
        raise CleanDiftError(
            f"{path}: depth must be a 16-bit single-channel PNG in millimetres, found mode {mode}"
        )
    values = values.astype(np.float64)
    if values.max() > MAX_MILLIMETRES or values.min() < 0:
        raise CleanDiftError(f"{path}: depth values outside 0..65535 mm")
    if 0 < values.max() < 20:
        raise CleanDiftError(
            f"{path}: depth at most {values.max():g}, which looks like metres: write millimetres "
            "(metres x 1000) as uint16"
        )
    metres = values / 1000.0
    metres[metres > max_depth] = 0
    return metres.astype(np.float32)


def check_metres(depth: np.ndarray, where: str) -> None:
    """Refuse depth stored in millimetres where metres are expected (the .mat holds metres)."""
    finite = depth[np.isfinite(depth)]
    if finite.size and finite.max() > 100:
        raise CleanDiftError(
            f"{where}: depth up to {finite.max():g}, which looks like millimetres: "
            "NYUv2's .mat stores metres (divide by 1000)"
        )
