"""Dense predictions (depth in metres, class logits) mapped back to the original image and saved.

A probe graph returns its map at the model's input size (the canvas); the map is cropped to the
image's content on the canvas and resized bilinearly to the original size, so every path (a probe
file on features, an exported graph, `extract`) computes the same thing. Depth is saved as a
16-bit PNG of millimetres, classes as a palette PNG (VOC's colours); pictures put input, truth and
prediction side by side (depth as magma-coloured disparity, as CleanDIFT's notebook shows it).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..atomic import atomic_path
from .preprocess import Placement

MAX_MILLIMETRES = 65535


def to_original(prediction: torch.Tensor, placement: Placement) -> torch.Tensor:
    """`[K, H, W]` canvas map -> `[K, h0, w0]` at the original size (bilinear, align False)."""
    top, left = placement.offset
    rows, cols = placement.content
    content = prediction[None, :, top : top + rows, left : left + cols].float()
    if (rows, cols) == tuple(placement.original):
        return content[0]
    resized = F.interpolate(content, size=placement.original, mode="bilinear", align_corners=False)
    return resized[0]


def millimetres(metres: np.ndarray) -> np.ndarray:
    """Depth in metres as uint16 millimetres (rounded, clipped): what the PNG stores."""
    values = np.rint(np.asarray(metres, np.float64) * 1000)
    return np.clip(values, 0, MAX_MILLIMETRES).astype(np.uint16)


def write_millimetre_png(path: Path, metres: np.ndarray) -> None:
    """Depth in metres as a 16-bit PNG of millimetres, atomically."""
    with atomic_path(path) as temporary:
        Image.fromarray(millimetres(metres)).save(temporary, format="PNG")


def voc_palette() -> list[int]:
    """VOC's colour map (bit-interleaved class index), flat RGB for 256 entries."""
    palette: list[int] = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.extend((r, g, b))
    return palette


def palette_image(labels: np.ndarray) -> Image.Image:
    """Class indices as a palette image with VOC's colours."""
    image = Image.fromarray(np.asarray(labels, dtype=np.uint8), mode="P")
    image.putpalette(voc_palette())
    return image


def write_palette_png(path: Path, labels: np.ndarray) -> None:
    """Class indices as a palette PNG, atomically."""
    with atomic_path(path) as temporary:
        palette_image(labels).save(temporary, format="PNG")


def disparity_rgb(metres: np.ndarray, scale: tuple[float, float] | None = None) -> np.ndarray:
    """uint8 RGB of 1/depth in matplotlib's magma (near = bright); invalid (<= 0) pixels black.
    `scale`: the disparity range to stretch (default: this map's 2nd..98th percentile)."""
    from matplotlib import colormaps

    depth = np.asarray(metres, np.float64)
    valid = depth > 0
    disparity = np.zeros_like(depth)
    disparity[valid] = 1.0 / depth[valid]
    if scale is None:
        values = disparity[valid]
        scale = (
            (float(np.percentile(values, 2)), float(np.percentile(values, 98)))
            if values.size
            else (0.0, 1.0)
        )
    low, high = scale
    normed = np.clip((disparity - low) / max(high - low, 1e-12), 0, 1)
    rgb = colormaps["magma"](normed)[..., :3]
    rgb[~valid] = 0
    return np.rint(rgb * 255).astype(np.uint8)


def side_by_side(panels: Sequence[np.ndarray], path: Path) -> None:
    """uint8 RGB panels of one height written left to right as a PNG, atomically."""
    height = max(p.shape[0] for p in panels)
    padded = [
        np.pad(p, ((0, height - p.shape[0]), (0, 4), (0, 0)), constant_values=255) for p in panels
    ]
    with atomic_path(path) as temporary:
        Image.fromarray(np.concatenate(padded, axis=1)).save(temporary, format="PNG")


def depth_picture(
    image: np.ndarray, prediction: np.ndarray, path: Path, truth: np.ndarray | None = None
) -> None:
    """input | truth | prediction (disparity, one colour scale from the truth when given)."""
    scale = None
    if truth is not None and (truth > 0).any():
        inverse = 1.0 / truth[truth > 0]
        scale = (float(np.percentile(inverse, 2)), float(np.percentile(inverse, 98)))
    panels = [image]
    if truth is not None:
        panels.append(disparity_rgb(truth, scale))
    panels.append(disparity_rgb(prediction, scale))
    side_by_side(panels, path)


def segmentation_picture(
    image: np.ndarray, prediction: np.ndarray, path: Path, truth: np.ndarray | None = None
) -> None:
    """input | truth | prediction in VOC's colours."""
    panels = [image]
    if truth is not None:
        panels.append(np.asarray(palette_image(truth).convert("RGB")))
    panels.append(np.asarray(palette_image(prediction).convert("RGB")))
    side_by_side(panels, path)


def write_prediction_files(
    stem: Path, prediction: torch.Tensor, placement: Placement, image: np.ndarray, task: str
) -> list[Path]:
    """For `extract` on a probe graph: `STEM.depth.png` (16-bit mm) or `STEM.labels.png`
    (palette), and `STEM.picture.png` (input | prediction), at the original image size."""
    original = to_original(prediction.float().cpu(), placement)
    picture = stem.with_name(stem.name + ".picture.png")
    if task == "depth":
        path = stem.with_name(stem.name + ".depth.png")
        metres = millimetres(original[0].numpy()).astype(np.float64) / 1000.0
        write_millimetre_png(path, metres)
        depth_picture(image, metres, picture)
    else:
        path = stem.with_name(stem.name + ".labels.png")
        labels = original.argmax(dim=0).numpy().astype(np.uint8)
        write_palette_png(path, labels)
        segmentation_picture(image, labels, picture)
    return [path, picture]


def prediction_png_bytes(prediction: torch.Tensor, placement: Placement, task: str) -> bytes:
    """A probe graph's canvas map as PNG bytes at the original size: 16-bit millimetres (depth)
    or palette class indices (segmentation), the same pixels `extract` writes."""
    import io

    original = to_original(prediction.float().cpu(), placement)
    if task == "depth":
        image = Image.fromarray(millimetres(original[0].numpy()))
    else:
        image = palette_image(original.argmax(dim=0).numpy().astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
