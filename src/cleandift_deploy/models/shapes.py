"""Input shape rules: images are multiples of 64 pixels, latents multiples of 8 cells."""

from __future__ import annotations

from ..errors import CleanDiftError
from .taps import LATENT_STRIDE

IMAGE_MULTIPLE = 64
LATENT_MULTIPLE = IMAGE_MULTIPLE // LATENT_STRIDE


def nearest_valid(size: int, multiple: int = IMAGE_MULTIPLE) -> tuple[int, int]:
    """The valid sizes just below and just above `size` (never below `multiple`)."""
    lower = max(multiple, size // multiple * multiple)
    upper = max(multiple, -(-size // multiple) * multiple)
    return lower, upper


def _check_multiple(what: str, height: int, width: int, multiple: int, note: str = "") -> None:
    if height > 0 and width > 0 and height % multiple == 0 and width % multiple == 0:
        return
    (h_lo, h_hi), (w_lo, w_hi) = nearest_valid(height, multiple), nearest_valid(width, multiple)
    options = list(dict.fromkeys((f"{h_lo}x{w_lo}", f"{h_hi}x{w_hi}")))
    raise CleanDiftError(
        f"{what} size {height}x{width} (HxW) is not a multiple of {multiple}{note}: "
        f"use {' or '.join(options)}"
    )


def check_multiple(what: str, height: int, width: int, multiple: int) -> None:
    """Fail with the nearest valid sizes when a side is not a positive multiple of `multiple`."""
    _check_multiple(what, height, width, multiple)


def check_image_size(height: int, width: int) -> None:
    """Fail with the nearest valid sizes when an image side is not a multiple of 64."""
    _check_multiple("image", height, width, IMAGE_MULTIPLE)


def check_latent_size(height: int, width: int) -> None:
    """Fail when a latent side is not a multiple of 8 (a multiple of 64 image pixels)."""
    note = f" (images must be multiples of {IMAGE_MULTIPLE} px)"
    _check_multiple("latent", height, width, LATENT_MULTIPLE, note)


def check_channels(what: str, got: int, expected: int) -> None:
    """Fail when a tensor has the wrong channel count."""
    if got != expected:
        raise CleanDiftError(f"{what} has {got} channels; the model expects {expected}")
