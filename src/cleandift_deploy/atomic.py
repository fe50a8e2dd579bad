"""Atomic file writes: everything is written under a temporary name and renamed at the end, so a
crash never leaves a half-written artifact under its final name."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import CleanDiftError


def refuse_existing(path: Path, force: bool) -> None:
    """Fail when `path` exists and the user did not ask to overwrite it."""
    if path.exists() and not force:
        raise CleanDiftError(f"{path} already exists: pass --force to overwrite it")


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling path to write; rename it to `final` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield temporary
        os.replace(temporary, final)
    finally:
        if temporary.exists():
            temporary.unlink()


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small text file atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text)
