"""Matches drawn on the image pair: a picture says at once whether matching works.

The pair sits side by side under a title (what the picture is and its score) and above a legend,
so the picture reads without the code: a line joins each source point to its predicted match,
green when the prediction lies within the tolerance of the true point, red when not; for a wrong
match a dashed yellow line leads on to the true point, ringed by the tolerance.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..atomic import atomic_path
from ..runtime.pca import caption_font

GOOD, BAD, TRUTH = (40, 200, 80), (230, 50, 50), (255, 200, 0)
INK, PAPER = (20, 20, 20), (255, 255, 255)
FONT_PX = 15
LINE_PX = 21
MARGIN = 10
GAP = 12
SHOWN_HEIGHT = (320, 640)
"""Images are scaled so the taller one is shown between these heights (small photos enlarged)."""


def _dashed(pen: ImageDraw.ImageDraw, start: tuple[float, float], end: tuple[float, float]) -> None:
    length = float(np.hypot(end[0] - start[0], end[1] - start[1]))
    steps = max(1, int(length // 6))
    for step in range(0, steps, 2):
        a, b = step / steps, min(1.0, (step + 1) / steps)
        pen.line(
            [
                (start[0] + a * (end[0] - start[0]), start[1] + a * (end[1] - start[1])),
                (start[0] + b * (end[0] - start[0]), start[1] + b * (end[1] - start[1])),
            ],
            fill=TRUTH,
            width=2,
        )


def _dot(pen: ImageDraw.ImageDraw, x: float, y: float, colour: tuple[int, int, int]) -> None:
    pen.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour, outline=PAPER)


def legend_lines(known: bool, truth: bool) -> list[tuple[tuple[int, int, int], str]]:
    """The legend's entries: (colour, text)."""
    if not known:
        return [(GOOD, "line: a source point (left) and its predicted match (right)")]
    lines = [
        (GOOD, "green: a source point (left) and its predicted match (right), within tolerance"),
        (BAD, "red: a predicted match farther than the tolerance from the true point"),
    ]
    if truth:
        where = "yellow dashes to an x: where a wrong match should have gone"
        lines.append((TRUTH, f"{where} (the ring: the tolerance around it)"))
    return lines


def draw_matches(
    source: Image.Image,
    target: Image.Image,
    source_points: np.ndarray,
    target_points: np.ndarray,
    path: Path,
    correct: np.ndarray | None = None,
    *,
    title: Sequence[str] = (),
    truth: np.ndarray | None = None,
    tolerance: float | None = None,
) -> None:
    """Save the pair side by side with a line per match (green correct, red wrong if known),
    `title` lines above, a legend below, and for wrong matches the `truth` (target pixels) with
    a ring of radius `tolerance` (target pixels)."""
    tallest = max(source.height, target.height)
    scale = min(max(1.0, SHOWN_HEIGHT[0] / tallest), SHOWN_HEIGHT[1] / tallest)
    shown = [
        im.convert("RGB").resize((round(im.width * scale), round(im.height * scale)))
        for im in (source, target)
    ]
    flags = np.ones(len(source_points), dtype=bool) if correct is None else correct
    legend = legend_lines(correct is not None, truth is not None and not flags.all())
    font = caption_font(FONT_PX)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    texts = [*title, *(text for _, text in legend)]
    text_width = max((measure.textlength(t, font=font) for t in texts), default=0.0)
    images_width = shown[0].width + GAP + shown[1].width
    width = int(max(images_width, text_width + 24) + 2 * MARGIN)
    top = MARGIN + LINE_PX * len(title) + (MARGIN if title else 0)
    height = top + max(s.height for s in shown) + MARGIN + LINE_PX * len(legend) + MARGIN
    canvas = Image.new("RGB", (width, height), PAPER)
    left, right = MARGIN, MARGIN + shown[0].width + GAP
    canvas.paste(shown[0], (left, top))
    canvas.paste(shown[1], (right, top))
    pen = ImageDraw.Draw(canvas)
    for row, line in enumerate(title):
        pen.text((MARGIN, MARGIN + row * LINE_PX), line, fill=INK, font=font)
    truths = truth if truth is not None else [None] * len(source_points)
    for (sx, sy), (tx, ty), ok, true in zip(
        source_points, target_points, flags, truths, strict=True
    ):
        start = (left + float(sx) * scale, top + float(sy) * scale)
        end = (right + float(tx) * scale, top + float(ty) * scale)
        colour = GOOD if ok else BAD
        if not ok and true is not None:
            goal = (right + float(true[0]) * scale, top + float(true[1]) * scale)
            _dashed(pen, end, goal)
            if tolerance is not None:
                r = tolerance * scale
                pen.ellipse([goal[0] - r, goal[1] - r, goal[0] + r, goal[1] + r], outline=TRUTH)
            pen.line([goal[0] - 5, goal[1] - 5, goal[0] + 5, goal[1] + 5], fill=TRUTH, width=2)
            pen.line([goal[0] - 5, goal[1] + 5, goal[0] + 5, goal[1] - 5], fill=TRUTH, width=2)
        pen.line([start, end], fill=colour, width=2)
        _dot(pen, *start, colour)
        _dot(pen, *end, colour)
    base = top + max(s.height for s in shown) + MARGIN
    for row, (colour, text) in enumerate(legend):
        y = base + row * LINE_PX
        pen.line([MARGIN, y + 9, MARGIN + 16, y + 9], fill=colour, width=4)
        pen.text((MARGIN + 24, y), text, fill=INK, font=font)
    with atomic_path(path) as temporary:
        canvas.save(temporary, format="PNG")
