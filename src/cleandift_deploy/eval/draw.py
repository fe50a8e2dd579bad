"""Matches drawn on the image pair: a picture says at once whether matching works."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..atomic import atomic_path

GOOD, BAD = (40, 200, 80), (230, 50, 50)


def draw_matches(
    source: Image.Image,
    target: Image.Image,
    source_points: np.ndarray,
    target_points: np.ndarray,
    path: Path,
    correct: np.ndarray | None = None,
) -> None:
    """Save the pair side by side with a line per match (green correct, red wrong if known)."""
    width = source.width + target.width
    canvas = Image.new("RGB", (width, max(source.height, target.height)), "white")
    canvas.paste(source.convert("RGB"), (0, 0))
    canvas.paste(target.convert("RGB"), (source.width, 0))
    pen = ImageDraw.Draw(canvas)
    flags = np.ones(len(source_points), dtype=bool) if correct is None else correct
    for (sx, sy), (tx, ty), ok in zip(source_points, target_points, flags, strict=True):
        colour = GOOD if ok else BAD
        end = (float(tx) + source.width, float(ty))
        pen.line([(float(sx), float(sy)), end], fill=colour, width=1)
        for x, y in ((float(sx), float(sy)), end):
            pen.ellipse([x - 2, y - 2, x + 2, y + 2], outline=colour)
    with atomic_path(path) as temporary:
        canvas.save(temporary, format="PNG")
