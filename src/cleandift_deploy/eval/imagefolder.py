"""The ImageFolder layout for kNN classification: `ROOT/train/CLASS/*` and `ROOT/val/CLASS/*`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import CleanDiftError
from ..runtime.images import IMAGE_SUFFIXES


@dataclass(frozen=True)
class LabelledImage:
    """One image file and its class index."""

    path: Path
    label: int


def class_names(root: Path) -> list[str]:
    """The classes: the sorted folder names under ROOT/train."""
    train = Path(root) / "train"
    if not train.is_dir():
        raise CleanDiftError(f"{train} does not exist: the layout is ROOT/{{train,val}}/CLASS/*")
    names = sorted(p.name for p in train.iterdir() if p.is_dir())
    if not names:
        raise CleanDiftError(f"{train} holds no class folders")
    return names


def load_split(
    root: Path, split: str, names: list[str], limit: int | None = None
) -> list[LabelledImage]:
    """Every image of `split` with its class index; at most `limit` per class."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise CleanDiftError(f"{folder} does not exist: the layout is ROOT/{{train,val}}/CLASS/*")
    found: list[LabelledImage] = []
    for path in sorted(p for p in folder.iterdir() if p.is_dir()):
        if path.name not in names:
            raise CleanDiftError(f"{path}: class {path.name!r} has no folder under train/")
        files = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        files = files[:limit] if limit is not None else files
        found.extend(LabelledImage(f, names.index(path.name)) for f in files)
    if not found:
        raise CleanDiftError(f"{folder} holds no images")
    return found
