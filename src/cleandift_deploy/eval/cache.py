"""A feature cache: each image's features are extracted once and reused by every pair.

SPair-71k's test split has ~1,800 images for 12,234 pairs, so extracting per pair would repeat
the work about 13 times. Entries are safetensors files named by the sha256 of the caller's key
parts (artifact manifest hash, tap, size, prompt, ...) and of the image file's bytes, written
atomically, so an interrupted run resumes where it stopped and a second run extracts nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..atomic import atomic_path
from ..errors import CleanDiftError
from ..models.checkpoints import read_safetensors, sha256_of

SUFFIX = ".safetensors"


class FeatureCache:
    """Features per (key parts, image bytes) on disk under `root`, plus a few in memory.

    With `root=None` nothing is written; the last `memory_items` entries are still kept in
    memory so that pairs sharing an image in a row do not extract it twice.
    """

    def __init__(self, root: Path | None, memory_items: int = 8) -> None:
        self.root = None if root is None else Path(root)
        self.extractions = 0
        """How many times `compute` ran (0 on a run served fully from the cache)."""
        self.hits = 0
        self._memory: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self._memory_items = memory_items
        self._image_hashes: dict[tuple[Path, int, int], str] = {}

    def key(
        self, key_parts: Mapping[str, str], image_path: Path, image_hash: str | None = None
    ) -> str:
        """sha256 over the sorted key parts and the image's content hash (the file's, or
        `image_hash` for an image that is not a file of its own, e.g. one in NYUv2's .mat)."""
        parts = {str(k): str(v) for k, v in key_parts.items()}
        content = image_hash or self._image_hash(Path(image_path))
        payload = json.dumps({"parts": parts, "image": content})
        return hashlib.sha256(payload.encode()).hexdigest()

    def path(self, key: str) -> Path | None:
        """Where the entry for `key` lives on disk (None without a root)."""
        return None if self.root is None else self.root / key[:2] / f"{key}{SUFFIX}"

    def get_or_compute(
        self,
        key_parts: Mapping[str, str],
        image_path: Path,
        compute: Callable[[], dict[str, torch.Tensor]],
        image_hash: str | None = None,
    ) -> dict[str, torch.Tensor]:
        """The cached tensors for this image and key, or `compute()`'s, stored for next time."""
        key = self.key(key_parts, image_path, image_hash)
        if key in self._memory:
            self._memory.move_to_end(key)
            self.hits += 1
            return self._memory[key]
        tensors = self._read(key)
        if tensors is None:
            tensors = compute()
            self.extractions += 1
            self._write(key, tensors)
        else:
            self.hits += 1
        self._remember(key, tensors)
        return tensors

    def _image_hash(self, image_path: Path) -> str:
        try:
            stat = image_path.stat()
        except OSError as err:
            raise CleanDiftError(f"cannot read image {image_path} ({err.strerror})") from None
        marker = (image_path.resolve(), stat.st_size, stat.st_mtime_ns)
        if marker not in self._image_hashes:
            self._image_hashes[marker] = sha256_of([image_path])
        return self._image_hashes[marker]

    def _read(self, key: str) -> dict[str, torch.Tensor] | None:
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        try:
            return read_safetensors(path)
        except CleanDiftError:
            return None  # a damaged entry is recomputed and replaced

    def _write(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        path = self.path(key)
        if path is None:
            return
        plain = {
            name: value.detach().to("cpu").contiguous().clone() for name, value in tensors.items()
        }
        with atomic_path(path) as temporary:
            save_file(plain, str(temporary))

    def _remember(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        if self._memory_items <= 0:
            return
        self._memory[key] = tensors
        while len(self._memory) > self._memory_items:
            self._memory.popitem(last=False)
