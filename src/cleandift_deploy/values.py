"""Values people type, parsed once for every verb and the HTTP server: image sizes (`HxW` or one
number), comma-separated lists (taps) and lists of positive integers (batch sizes).

Bottom layer: imports nothing of ours but errors. Each parser raises `CleanDiftError` with one
line naming what was expected; callers add the option or parameter name.
"""

from __future__ import annotations

from collections.abc import Iterable

from .errors import CleanDiftError


def parse_size(text: str, what: str = "size") -> tuple[int, int]:
    """`HxW` (or one number for a square) as (H, W)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2:
        raise CleanDiftError(f"{what} {text!r} is not HxW (e.g. 512x768) or one number")
    return parts[0], parts[1]


def split_list(values: str | Iterable[str]) -> tuple[str, ...]:
    """`a,b` (or several such strings, e.g. a repeated option) as ("a", "b"), blanks dropped."""
    texts = [values] if isinstance(values, str) else list(values)
    return tuple(item.strip() for text in texts for item in text.split(",") if item.strip())


def parse_positive_ints(text: str, what: str = "batch sizes") -> tuple[int, ...]:
    """Comma-separated positive integers (`1,2,4,8`)."""
    try:
        values = tuple(int(v) for v in split_list(text))
    except ValueError:
        raise CleanDiftError(f"{text!r}: give {what} like 1,2,4,8") from None
    if not values or min(values) < 1:
        raise CleanDiftError(f"{text!r}: {what} are positive integers")
    return values


def parse_batch_range(text: str) -> tuple[int, int, int]:
    """`MIN:OPT:MAX` (or one number for a static batch) as three ints."""
    try:
        parts = [int(p) for p in text.split(":")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3:
        raise CleanDiftError(f"--batch {text!r} is not MIN:OPT:MAX (e.g. 1:2:4) or one number")
    return parts[0], parts[1], parts[2]
