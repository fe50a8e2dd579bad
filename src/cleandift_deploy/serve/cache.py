"""A least-recently-used cache bounded in bytes, for uploaded images and their features.

The page uploads each image once and refers to it by its content hash; the server keeps the
decoded pixels, each model's features of it and prepared matching targets here. Every entry
declares its size; inserting past the limit evicts the least recently used entries first, and an
entry larger than the whole limit is not kept at all, so the cache never holds more than its limit.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

import numpy as np
import torch

ID_HEX = 32
"""Image ids: the first 32 hex digits (128 bits) of the bytes' SHA-256."""


def content_id(data: bytes) -> str:
    """The id of an uploaded image: a hash of its bytes, so one image has one id."""
    return hashlib.sha256(data).hexdigest()[:ID_HEX]


def is_content_id(value: object) -> bool:
    """Whether `value` has the form of an image id (it may still be unknown to the cache)."""
    return (
        isinstance(value, str)
        and len(value) == ID_HEX
        and all(c in "0123456789abcdef" for c in value)
    )


def nbytes(value: Any) -> int:
    """Bytes held by arrays and tensors inside `value` (dataclasses, dicts, tuples walked)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(nbytes(v) for v in value)
    if hasattr(value, "__dataclass_fields__"):
        return sum(nbytes(getattr(value, name)) for name in value.__dataclass_fields__)
    return 0


class ByteLRU:
    """Thread-safe LRU mapping whose entries' sizes sum to at most `limit` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    def get(self, key: Hashable) -> Any | None:
        """The value (now the most recently used), or None."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self.hits += 1
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: Hashable, value: Any, size: int | None = None) -> bool:
        """Keep `value`, evicting the oldest entries to make room; False when it alone is over
        the limit (then it is not kept)."""
        size = nbytes(value) if size is None else size
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if size > self.limit:
                return False
            while self._entries and self._bytes + size > self.limit:
                _, (_, freed) = self._entries.popitem(last=False)
                self._bytes -= freed
                self.evictions += 1
            self._entries[key] = (value, size)
            self._bytes += size
            return True

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def snapshot(self) -> dict[str, int]:
        """JSON-ready figures: bytes held, limit, entries, hits, misses, evictions."""
        with self._lock:
            return {
                "bytes": self._bytes,
                "limit": self.limit,
                "entries": len(self._entries),
                "hits": self.hits,
                "misses": self.misses,
                "evictions": self.evictions,
            }
