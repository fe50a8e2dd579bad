"""PF-PASCAL: `<split>_pairs_pf_pascal.csv` (source_image, target_image, class 1-20, XA, YA, XB,
YB as ';'-separated lists) beside `JPEGImages/`. No boxes: PCK uses the image size."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import CleanDiftError
from .datasets import image_size, require_file, same_length
from .protocol import PairSample

CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
COLUMNS = ("source_image", "target_image", "class", "XA", "YA", "XB", "YB")


def pairs_file(root: Path, split: str) -> Path:
    """The CSV of `split` (trn, val or test)."""
    return require_file(root / f"{split}_pairs_pf_pascal.csv", f"PF-PASCAL {split} pair list")


def resolve_image(root: Path, name: str) -> Path:
    """An image named in a pair list: relative to the root, or by file name in JPEGImages/."""
    for candidate in (root / name, root / "JPEGImages" / Path(name).name):
        if candidate.is_file():
            return candidate
    raise CleanDiftError(f"missing image: {root / 'JPEGImages' / Path(name).name} does not exist")


def read_pairs(
    root: Path, split: str, categories: set[str] | None, filters: Mapping[str, int]
) -> list[PairSample]:
    """Every row of the split's pair list, kept by category; the row index is the pair id."""
    path = pairs_file(root, split)
    pairs = []
    for index, row in enumerate(_rows(path)):
        origin = f"{path} row {index + 1}"
        category = _category(row["class"], origin)
        if categories is not None and category not in categories:
            continue
        source = _points(row, "XA", "YA", origin)
        target = _points(row, "XB", "YB", origin)
        same_length(source, target, origin, "XA/YA and XB/YB")
        source_path = resolve_image(root, row["source_image"])
        target_path = resolve_image(root, row["target_image"])
        pairs.append(
            PairSample(
                str(index),
                category,
                source_path,
                target_path,
                image_size(source_path),
                image_size(target_path),
                source,
                target,
                None,
                None,
            )
        )
    return pairs


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise CleanDiftError(f"{path} has no column {', '.join(missing)}")
        return list(reader)


def _category(value: str, origin: str) -> str:
    try:
        return CLASSES[int(float(value)) - 1]
    except (ValueError, IndexError):
        raise CleanDiftError(f"{origin}: field class is {value!r}, not 1-20") from None


def _points(row: dict[str, str], x_field: str, y_field: str, origin: str) -> np.ndarray:
    try:
        xs = [float(v) for v in row[x_field].split(";") if v.strip()]
        ys = [float(v) for v in row[y_field].split(";") if v.strip()]
    except ValueError:
        raise CleanDiftError(f"{origin}: field {x_field} or {y_field} is not numbers") from None
    if len(xs) != len(ys):
        raise CleanDiftError(f"{origin}: fields {x_field} and {y_field} differ in length")
    return np.stack([xs, ys], axis=1) if xs else np.zeros((0, 2))
