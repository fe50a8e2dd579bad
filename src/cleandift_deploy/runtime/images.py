"""Decoding image files safely into uint8 RGB arrays.

Pillow's decompression-bomb limit stays on, EXIF orientation is applied (a phone photo is seen the
way a person sees it), and every mode is brought to 8-bit RGB: greyscale is repeated, transparency
is composited over white (transparent pixels have no defined colour), and 16-bit data is scaled to
8 bits instead of clipped, which is what Pillow's own `convert` would do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import CleanDiftError

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)
"""File suffixes `extract` picks up when it walks a folder."""

_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_BACKGROUND = (255, 255, 255)


def _wide_to_rgb(image: Image.Image) -> np.ndarray:
    """16-bit (or 32-bit integer) greyscale to 8-bit RGB by scaling 0..65535 onto 0..255."""
    values = np.asarray(image).astype(np.float64)
    eight_bit = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
    return np.repeat(eight_bit[..., None], 3, axis=2)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )


def pil_to_rgb(image: Image.Image) -> np.ndarray:
    """An already opened Pillow image as a contiguous uint8 [H, W, 3] array (EXIF applied)."""
    image = ImageOps.exif_transpose(image)
    if image.mode in _WIDE_MODES:
        return _wide_to_rgb(image)
    if image.mode == "F":
        raise CleanDiftError("32-bit float images are not supported: save the image as 8 or 16 bit")
    if _has_alpha(image):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_ALPHA_BACKGROUND, 255))
        image = Image.alpha_composite(background, rgba)
    return np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))


def read_image(path: Path) -> np.ndarray:
    """Decode the file at `path` to uint8 [H, W, 3]; a one-line error when it cannot be read."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            return pil_to_rgb(image)
    except Image.DecompressionBombError as err:
        raise CleanDiftError(f"{path}: refused as a possible decompression bomb ({err})") from None
    except FileNotFoundError:
        raise CleanDiftError(f"{path} does not exist") from None
    except UnidentifiedImageError:
        raise CleanDiftError(f"{path} is not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise CleanDiftError(f"{path} is corrupt or truncated ({err})") from None
