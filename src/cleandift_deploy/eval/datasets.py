"""Dataset readers: one entry point over the SPair-71k, PF-PASCAL and PF-WILLOW layouts.

Every reader works from a local folder (nothing is downloaded) and yields `PairSample`s with
keypoints and boxes in original pixels. A missing folder, file or field ends in one line naming
the path and the field.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import CleanDiftError
from .protocol import PairSample

DATASETS = ("spair", "pfpascal", "pfwillow")


def load_pairs(
    data: Path,
    dataset: str,
    split: str = "test",
    categories: Sequence[str] | None = None,
    limit: int | None = None,
    filters: Mapping[str, int] | None = None,
) -> list[PairSample]:
    """The annotated pairs of `split`, optionally only `categories`, at most `limit` per
    category, and (SPair only) only pairs whose difficulty fields equal `filters`."""
    from . import pfpascal, pfwillow, spair

    readers: dict[str, Callable[..., list[PairSample]]] = {
        "spair": spair.read_pairs,
        "pfpascal": pfpascal.read_pairs,
        "pfwillow": pfwillow.read_pairs,
    }
    if dataset not in readers:
        raise CleanDiftError(f"unknown dataset {dataset!r}: use one of {', '.join(DATASETS)}")
    data = Path(data)
    if not data.is_dir():
        raise CleanDiftError(f"no dataset folder at {data}: pass --data the {dataset} root")
    if filters and dataset != "spair":
        raise CleanDiftError("difficulty filters exist only for SPair-71k: drop --filter")
    pairs = readers[dataset](data, split, set(categories) if categories else None, filters or {})
    pairs = per_category_limit(pairs, limit)
    if not pairs:
        raise CleanDiftError(
            f"no pairs in {data} for split {split!r}"
            + (f" and categories {', '.join(categories)}" if categories else "")
        )
    return pairs


def per_category_limit(pairs: Iterable[PairSample], limit: int | None) -> list[PairSample]:
    """The first `limit` pairs of every category, in reading order (all with None)."""
    seen: dict[str, int] = {}
    kept = []
    for pair in pairs:
        if limit is not None and seen.get(pair.category, 0) >= limit:
            continue
        seen[pair.category] = seen.get(pair.category, 0) + 1
        kept.append(pair)
    return kept


def require_file(path: Path, what: str) -> Path:
    """`path` itself, or a one-line error naming it and what it should be."""
    if not path.is_file():
        raise CleanDiftError(f"missing {what}: {path} does not exist")
    return path


def image_size(path: Path) -> tuple[int, int]:
    """(W, H) of an image file, read from its header."""
    require_file(path, "image")
    try:
        with Image.open(path) as image:
            return image.size
    except OSError as err:
        raise CleanDiftError(f"cannot read image {path} ({err})") from None


def points_array(values: object, origin: str, field: str) -> np.ndarray:
    """A [K,2] float64 array of (x, y), or an error naming the file and the field."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise CleanDiftError(f"{origin}: field {field} is not a list of [x, y] points") from None
    if array.size == 0:
        return np.zeros((0, 2))
    if array.ndim != 2 or array.shape[1] != 2 or not np.isfinite(array).all():
        raise CleanDiftError(f"{origin}: field {field} is not a list of [x, y] points")
    return array


def same_length(source: np.ndarray, target: np.ndarray, origin: str, fields: str) -> None:
    """Refuse keypoint lists of different lengths, naming the file and the fields."""
    if len(source) != len(target):
        raise CleanDiftError(
            f"{origin}: {fields} have {len(source)} and {len(target)} points: "
            "every source keypoint needs its target"
        )
