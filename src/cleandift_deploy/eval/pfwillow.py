"""PF-WILLOW: `test_pairs.csv` (imageA, imageB, then 10 x and 10 y of A, 10 x and 10 y of B).
The category is the image's folder (e.g. `car(G)`); PCK uses the keypoints' extent."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import CleanDiftError
from .datasets import image_size, require_file
from .protocol import PairSample

POINTS = 10
COLUMNS = 2 + 4 * POINTS


def resolve_image(root: Path, name: str) -> Path:
    """An image named in the pair list, relative to the root or to the root's parent layout
    (`PF-dataset/<class>/x.png` with the root being `PF-dataset`)."""
    relative = Path(name)
    for candidate in (root / relative, root / Path(*relative.parts[1:])):
        if candidate.is_file():
            return candidate
    raise CleanDiftError(f"missing image: {root / relative} does not exist")


def read_pairs(
    root: Path, split: str, categories: set[str] | None, filters: Mapping[str, int]
) -> list[PairSample]:
    """Every row of `test_pairs.csv` (PF-WILLOW has only a test split)."""
    if split != "test":
        raise CleanDiftError("PF-WILLOW has only a test split: use --split test")
    path = require_file(root / "test_pairs.csv", "PF-WILLOW pair list")
    pairs = []
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    for index, row in enumerate(rows[1:]):
        origin = f"{path} row {index + 1}"
        if len(row) != COLUMNS:
            raise CleanDiftError(
                f"{origin} has {len(row)} fields, not {COLUMNS}: "
                f"two image names and {POINTS} x then {POINTS} y per image"
            )
        source_path = resolve_image(root, row[0])
        category = source_path.parent.name
        if categories is not None and category not in categories:
            continue
        target_path = resolve_image(root, row[1])
        values = _numbers(row[2:], origin).reshape(4, POINTS)
        pairs.append(
            PairSample(
                str(index),
                category,
                source_path,
                target_path,
                image_size(source_path),
                image_size(target_path),
                values[:2].T.copy(),
                values[2:].T.copy(),
                None,
                None,
            )
        )
    return pairs


def _numbers(fields: list[str], origin: str) -> np.ndarray:
    try:
        return np.array([float(v) for v in fields])
    except ValueError:
        raise CleanDiftError(f"{origin}: a keypoint field is not a number") from None
