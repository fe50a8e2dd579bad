"""Preprocessing: any accepted image input -> one uint8 [B,3,H,W] batch at the model's size.

Every input kind (Pillow images, uint8 HxWx3 arrays, float [-1,1] tensors) goes through the same
uint8 RGB path, so every backend sees identical pixels. Two resize policies:

- "squash": resize to the model's H x W regardless of aspect, as the DIFT / CleanDIFT references do;
- "pad": keep the aspect ratio, fit inside H x W, place at the top-left corner and fill the rest
  with mid grey (0 in the model's [-1,1] range), so a feature cell's position is simply the pixel
  position times the scale;
- "letterbox": keep the aspect ratio, fit inside H x W, centre it and fill the rest with black
  (pixel value 0), as sd-dino and GeoAware-SC feed DINOv2 and SD (METHODS.md §2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..errors import CleanDiftError
from ..manifest import InputInfo
from .images import pil_to_rgb

RESIZE_POLICIES = ("squash", "pad", "letterbox")
PAD_VALUE = 128
LETTERBOX_VALUE = 0
FLOAT_TOLERANCE = 1e-3
"""How far outside [-1, 1] a float batch may stray (rounding) before it is refused."""

ImageInput = Image.Image | np.ndarray | torch.Tensor
"""One image (Pillow, uint8 HxWx3 array) or a float [-1,1] tensor [3,H,W] / [B,3,H,W]."""


@dataclass(frozen=True)
class Placement:
    """Where one image landed on the model's canvas: its original size and the size of the
    region it covers (the whole canvas for "squash", the top-left fitted part for "pad"),
    and that region's top-left corner (H, W offsets; non-zero only for "letterbox")."""

    original: tuple[int, int]
    content: tuple[int, int]
    offset: tuple[int, int] = (0, 0)


@dataclass
class PreparedBatch:
    """Pixels ready for a backend and how each image was placed."""

    pixels: torch.Tensor
    placements: list[Placement]


def check_policy(policy: str) -> str:
    """The policy itself, or a one-line error naming the valid ones."""
    if policy not in RESIZE_POLICIES:
        raise CleanDiftError(
            f"unknown resize policy {policy!r}: use {' or '.join(RESIZE_POLICIES)}"
        )
    return policy


def _float_batch_to_arrays(batch: torch.Tensor) -> list[np.ndarray]:
    if batch.ndim == 3:
        batch = batch[None]
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise CleanDiftError(
            f"a float image tensor must be [B,3,H,W] or [3,H,W]; got shape {tuple(batch.shape)}"
        )
    batch = batch.detach().float().cpu()
    if not torch.isfinite(batch).all():
        raise CleanDiftError("the image tensor contains NaN or infinite values")
    low, high = float(batch.min()), float(batch.max())
    if low < -1 - FLOAT_TOLERANCE or high > 1 + FLOAT_TOLERANCE:
        raise CleanDiftError(
            f"float images must be scaled to [-1, 1]; got values in [{low:.3g}, {high:.3g}]: "
            "pass uint8 arrays or scale with x / 127.5 - 1"
        )
    quantised = ((batch + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return [np.ascontiguousarray(image.permute(1, 2, 0).numpy()) for image in quantised]


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise CleanDiftError(
            f"image arrays must be uint8 [H,W,3]; got {array.dtype} with shape {array.shape}"
        )
    return np.ascontiguousarray(array)


def to_rgb_arrays(images: ImageInput | Sequence[ImageInput]) -> list[np.ndarray]:
    """Every image of the input as a uint8 [H, W, 3] array."""
    if isinstance(images, Image.Image | np.ndarray | torch.Tensor):
        images = [images]
    arrays: list[np.ndarray] = []
    for item in images:
        if isinstance(item, Image.Image):
            arrays.append(pil_to_rgb(item))
        elif isinstance(item, np.ndarray):
            arrays.append(_array_to_rgb(item))
        elif isinstance(item, torch.Tensor):
            if not item.is_floating_point():
                raise CleanDiftError(
                    f"image tensors must be float in [-1, 1]; got {item.dtype}: "
                    "pass uint8 data as numpy [H,W,3] arrays"
                )
            arrays.extend(_float_batch_to_arrays(item))
        else:
            raise CleanDiftError(
                f"unsupported image input {type(item).__name__}: give Pillow images, "
                "uint8 [H,W,3] arrays or a float [B,3,H,W] tensor in [-1, 1]"
            )
    if not arrays:
        raise CleanDiftError("no images given")
    return arrays


def _resize(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    if rgb.shape[:2] == (height, width):
        return rgb
    resized = Image.fromarray(rgb).resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(resized)


def fit(rgb: np.ndarray, size: tuple[int, int], policy: str) -> tuple[np.ndarray, Placement]:
    """One image resized onto a canvas of `size` (H, W) by the resize policy."""
    height, width = size
    original = (int(rgb.shape[0]), int(rgb.shape[1]))
    if policy == "squash":
        return _resize(rgb, height, width), Placement(original, size)
    scale = min(height / original[0], width / original[1])
    content = (
        min(height, max(1, round(original[0] * scale))),
        min(width, max(1, round(original[1] * scale))),
    )
    offset = (0, 0)
    if policy == "letterbox":
        offset = ((height - content[0]) // 2, (width - content[1]) // 2)
    fill = LETTERBOX_VALUE if policy == "letterbox" else PAD_VALUE
    canvas = np.full((height, width, 3), fill, dtype=np.uint8)
    top, left = offset
    canvas[top : top + content[0], left : left + content[1]] = _resize(rgb, *content)
    return canvas, Placement(original, content, offset)


def prepare(
    images: ImageInput | Sequence[ImageInput], size: tuple[int, int], policy: str
) -> PreparedBatch:
    """A uint8 [B,3,H,W] batch of `images` fitted to `size` by `policy`."""
    check_policy(policy)
    fitted = [fit(rgb, size, policy) for rgb in to_rgb_arrays(images)]
    stacked = np.stack([canvas for canvas, _ in fitted]).transpose(0, 3, 1, 2)
    return PreparedBatch(torch.from_numpy(np.ascontiguousarray(stacked)), [p for _, p in fitted])


def to_model_input(pixels: torch.Tensor, info: InputInfo) -> torch.Tensor:
    """uint8 pixels in the dtype and range the model's `image` input declares.

    A uint8 input gets the pixels as they are (the graph scales them); a float input gets them
    mapped linearly from 0..255 onto the declared value range, e.g. [-1, 1].
    """
    if info.dtype == "uint8":
        return pixels
    if info.dtype not in ("float32", "float16"):
        raise CleanDiftError(f"unsupported model input dtype {info.dtype!r}: re-export the model")
    low, high = info.value_range
    scaled = pixels.float() * ((high - low) / 255.0) + low
    return scaled.to(getattr(torch, info.dtype))
