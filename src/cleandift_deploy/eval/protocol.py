"""The evaluation's plug-in point: what a dataset reader yields and what a matching method is.

Every reader yields `PairSample`s; every method turns one into predicted target points in the
target's ORIGINAL pixels. The methods themselves (and the registry that builds one by name) live
in `cleandift_deploy.methods`, above this package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..runtime.precision import EXACT, PrecisionRequest

BBox = tuple[float, float, float, float]


@dataclass(frozen=True)
class PairSample:
    """One annotated pair: images, their original sizes, aligned keypoints and bounding boxes."""

    pair_id: str
    category: str
    source_path: Path
    target_path: Path
    source_size: tuple[int, int]
    """(W, H) of the source image in original pixels."""
    target_size: tuple[int, int]
    source_points: np.ndarray
    """[K,2] float (x, y) in original source pixels."""
    target_points: np.ndarray
    """[K,2] float (x, y) in original target pixels, aligned with `source_points`."""
    source_bbox: BBox | None
    """x1, y1, x2, y2 in original source pixels, or None when the layout has none."""
    target_bbox: BBox | None


@dataclass
class MethodOptions:
    """Everything `eval pck` parses; each method reads what it needs and ignores the rest."""

    model: Path | None = None
    dino: Path | None = None
    backend: str = "auto"
    tap: str | None = None
    mode: str = "nn"
    descriptor: str | None = None
    source: Path | None = None
    arch: str | None = None
    random_init: bool = False
    checkpoint: Path | None = None
    settings: dict[str, str] = field(default_factory=dict)
    cache: Path | None = None
    seed: int = 0
    precision: PrecisionRequest = EXACT
    """bf16 behind the fidelity gate for artifact models (`--precision bf16`)."""


class Method(Protocol):
    """A correspondence method: source keypoints in, predicted target keypoints out."""

    name: str

    def describe(self) -> dict[str, Any]:
        """What results.json records under "model": artifact and manifest hash, preset,
        settings, and the prompt used ("a photo of a {category}" or the baked one)."""
        ...

    def predict(self, sample: PairSample) -> np.ndarray:
        """[K,2] predicted (x, y) in ORIGINAL target pixels for `sample.source_points`."""
        ...


MethodFactory = Callable[[MethodOptions], Method]
"""Builds a method from the parsed options (the registry in `methods.registry` holds them)."""
