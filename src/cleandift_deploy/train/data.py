"""Training images: a folder of jpg/png/webp files, each with an optional `NAME.json` caption.

Images are checked once when the folder is scanned; unreadable files and bad caption files are
skipped and counted. The order images are visited in is a function of (seed, position) only, so a
resumed run continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import CleanDiftError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
ResizeMode = Literal["crop", "squash"]
RESIZE_MODES: tuple[ResizeMode, ...] = ("crop", "squash")


@dataclass(frozen=True)
class ImageRecord:
    """One usable image and its caption (None: use the fixed prompt)."""

    path: Path
    caption: str | None


def _is_readable(path: Path) -> bool:
    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return False
    return True


def _read_caption(image_path: Path) -> tuple[str | None, bool]:
    """The caption beside an image and whether the caption file (if any) was usable."""
    caption_path = image_path.with_suffix(".json")
    if not caption_path.is_file():
        return None, True
    try:
        caption = json.loads(caption_path.read_text()).get("caption")
    except (OSError, ValueError, AttributeError):
        return None, False
    return (caption, True) if isinstance(caption, str) else (None, False)


def _to_size(image: Image.Image, size: int, mode: ResizeMode) -> Image.Image:
    if mode == "crop":
        return ImageOps.fit(image, (size, size), Image.Resampling.BICUBIC)
    return image.resize((size, size), Image.Resampling.BICUBIC)


class ImageFolder:
    """The usable images of a folder, loaded as `[3, size, size]` tensors in [-1, 1]."""

    def __init__(self, folder: Path, size: int, resize: ResizeMode = "crop") -> None:
        if resize not in RESIZE_MODES:
            raise CleanDiftError(f"unknown resize mode {resize!r}: use {' or '.join(RESIZE_MODES)}")
        if not folder.is_dir():
            raise CleanDiftError(f"{folder} is not a folder: give a folder of jpg/png/webp images")
        self.size, self.resize = size, resize
        self.records: list[ImageRecord] = []
        self.skipped: list[Path] = []
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            caption, caption_ok = _read_caption(path)
            if caption_ok and _is_readable(path):
                self.records.append(ImageRecord(path, caption))
            else:
                self.skipped.append(path)
        if not self.records:
            found = f" ({len(self.skipped)} unreadable)" if self.skipped else ""
            raise CleanDiftError(
                f"no usable images in {folder}{found}: it needs jpg, png or webp files"
            )

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> torch.Tensor:
        """Image `index` resized (centre crop or squash) and scaled to [-1, 1]."""
        path = self.records[index].path
        try:
            with Image.open(path) as image:
                rgb = _to_size(image.convert("RGB"), self.size, self.resize)
        except OSError as err:
            raise CleanDiftError(f"cannot read {path} ({err}): remove or replace it") from None
        array = torch.from_numpy(np.asarray(rgb, dtype=np.float32).copy())
        return array.permute(2, 0, 1) / 127.5 - 1.0

    def caption(self, index: int) -> str | None:
        """The caption of image `index`, or None when it has no caption file."""
        return self.records[index].caption


class SampleOrder:
    """Position `p` in the stream of samples -> image index: a fresh permutation per epoch,
    derived from (seed, epoch) alone, so no sampler state needs saving."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed = size, seed
        self._epoch = -1
        self._permutation = torch.arange(size)

    def _permutation_of(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._permutation = torch.randperm(self.size, generator=generator)
            self._epoch = epoch
        return self._permutation

    def indices(self, start: int, count: int) -> list[int]:
        """The image indices at positions `start .. start + count - 1`."""
        return [
            int(self._permutation_of(p // self.size)[p % self.size])
            for p in range(start, start + count)
        ]
