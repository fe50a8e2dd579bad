"""Feature pictures: the three principal components of a feature map shown as RGB.

Similar features get similar colours, so one glance shows whether a model separates parts of an
object (and whether two backends agree) far better than a table of numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..atomic import atomic_path
from ..errors import CleanDiftError

CLIP_PERCENT = 1.0
"""Components are stretched between their 1st and 99th percentiles, so outliers do not dominate."""


def pca_rgb(features: torch.Tensor) -> np.ndarray:
    """uint8 [h, w, 3] picture of a [C, h, w] map (give only the cells the image covers: padding
    would take a component of its own)."""
    if features.ndim != 3 or features.shape[0] < 3:
        raise CleanDiftError(f"PCA needs a [C>=3, h, w] map; got shape {tuple(features.shape)}")
    channels, height, width = features.shape
    cells = features.reshape(channels, -1).T.double()
    centred = cells - cells.mean(dim=0)
    _, _, components = torch.linalg.svd(centred, full_matrices=False)
    projected = (centred @ components[:3].T).numpy()
    low, high = np.percentile(projected, [CLIP_PERCENT, 100 - CLIP_PERCENT], axis=0)
    scaled = np.clip((projected - low) / np.maximum(high - low, 1e-12), 0.0, 1.0)
    return np.rint(scaled * 255).astype(np.uint8).reshape(height, width, 3)


def pca_picture(features: torch.Tensor, size: tuple[int, int]) -> Image.Image:
    """The PCA picture of a [C, h, w] map shown at `size` (H, W), cells as blocks: give the
    image's own aspect ratio so nothing looks squashed."""
    picture = Image.fromarray(pca_rgb(features.detach().float().cpu()))
    return picture.resize((size[1], size[0]), Image.Resampling.NEAREST)


def save_pca_picture(features: torch.Tensor, path: Path, size: tuple[int, int]) -> None:
    """Write the PCA picture of a [C, h, w] map as a PNG of `size` (H, W), cells as blocks."""
    with atomic_path(path) as temporary:
        pca_picture(features, size).save(temporary, format="PNG")


def shown_size(original: tuple[int, int], longest: int = 512) -> tuple[int, int]:
    """(H, W) with the original's aspect ratio and `longest` pixels on its longer side."""
    height, width = original
    scale = longest / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def caption_font(size: int = 15) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled font at `size` px (its fixed bitmap font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()


def save_pca_panel(
    photo: Image.Image,
    features: torch.Tensor,
    path: Path,
    title: str,
    tap: str,
) -> None:
    """The photo and the PCA picture of its features side by side, at the photo's aspect ratio,
    under a title naming the image and tap and captions saying what each half shows."""
    height = 320
    width = round(photo.width * height / photo.height)
    left = photo.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
    right = pca_picture(features, (height, width))
    font, margin, gap, line = caption_font(), 10, 12, 21
    captions = ("the photo", f"its {tap} features: 3 principal components as red, green, blue")
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text = max(measure.textlength(t, font=font) for t in (title, *captions))
    canvas_width = int(max(2 * width + gap, text) + 2 * margin)
    canvas = Image.new("RGB", (canvas_width, margin + line + height + line + 2 * margin), "white")
    pen = ImageDraw.Draw(canvas)
    pen.text((margin, margin), title, fill=(20, 20, 20), font=font)
    top = margin + line + 4
    for index, (picture, caption) in enumerate(zip((left, right), captions, strict=True)):
        x = margin + index * (width + gap)
        canvas.paste(picture, (x, top))
        pen.text((x, top + height + 4), caption, fill=(20, 20, 20), font=font)
    with atomic_path(path) as temporary:
        canvas.save(temporary, format="PNG")
