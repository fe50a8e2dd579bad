"""SPair-71k: `PairAnnotation/<split>/<id>-<src>-<trg>:<cat>.json` with images in
`JPEGImages/<cat>/`; boxes [x1,y1,x2,y2] and keypoints [x,y] in original pixels."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CleanDiftError
from .datasets import points_array, require_file, same_length
from .protocol import PairSample

SPLITS = ("trn", "val", "test")
DIFFICULTY_FIELDS = (
    "mirror",
    "viewpoint_variation",
    "scale_variation",
    "truncation",
    "occlusion",
)


def read_pairs(
    root: Path, split: str, categories: set[str] | None, filters: Mapping[str, int]
) -> list[PairSample]:
    """Every pair of `split` (files in name order), kept by category and difficulty filters."""
    unknown = set(filters) - set(DIFFICULTY_FIELDS)
    if unknown:
        raise CleanDiftError(
            f"unknown SPair filter {', '.join(sorted(unknown))}: use {', '.join(DIFFICULTY_FIELDS)}"
        )
    if split not in SPLITS:
        raise CleanDiftError(f"unknown SPair split {split!r}: use {', '.join(SPLITS)}")
    folder = root / "PairAnnotation" / split
    if not folder.is_dir():
        raise CleanDiftError(f"missing folder {folder}: --data must be the SPair-71k root")
    pairs = []
    for path in sorted(folder.glob("*.json")):
        if categories is not None and path.stem.rpartition(":")[2] not in categories:
            continue
        record = _read_json(path)
        if any(_field(record, name, path) != value for name, value in filters.items()):
            continue
        pairs.append(pair_from_record(root, path, record))
    return pairs


def _read_json(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CleanDiftError(f"cannot read pair file {path} ({err})") from None
    if not isinstance(record, dict):
        raise CleanDiftError(f"pair file {path} is not a JSON object")
    return record


def _field(record: Mapping[str, Any], name: str, path: Path) -> Any:
    if name not in record:
        raise CleanDiftError(f"pair file {path} has no field {name!r}")
    return record[name]


def _size(record: Mapping[str, Any], name: str, path: Path) -> tuple[int, int]:
    value = _field(record, name, path)
    try:
        return int(value[0]), int(value[1])
    except (TypeError, ValueError, IndexError):
        raise CleanDiftError(f"{path}: field {name} is not [W, H, C]") from None


def _bbox(record: Mapping[str, Any], name: str, path: Path) -> tuple[float, float, float, float]:
    value = _field(record, name, path)
    try:
        x1, y1, x2, y2 = (float(v) for v in value)
    except (TypeError, ValueError):
        raise CleanDiftError(f"{path}: field {name} is not [x1, y1, x2, y2]") from None
    return x1, y1, x2, y2


def pair_from_record(root: Path, path: Path, record: Mapping[str, Any]) -> PairSample:
    """One pair from its parsed JSON, with both images checked to exist."""
    category = str(_field(record, "category", path))
    images = root / "JPEGImages" / category
    source = points_array(_field(record, "src_kps", path), str(path), "src_kps")
    target = points_array(_field(record, "trg_kps", path), str(path), "trg_kps")
    same_length(source, target, str(path), "src_kps and trg_kps")
    return PairSample(
        pair_id=path.stem,
        category=category,
        source_path=require_file(images / str(_field(record, "src_imname", path)), "image"),
        target_path=require_file(images / str(_field(record, "trg_imname", path)), "image"),
        source_size=_size(record, "src_imsize", path),
        target_size=_size(record, "trg_imsize", path),
        source_points=source,
        target_points=np.ascontiguousarray(target),
        source_bbox=_bbox(record, "src_bndbox", path),
        target_bbox=_bbox(record, "trg_bndbox", path),
    )
