"""The evaluation's plug-in point: what a dataset reader yields and what a matching method is.

Every reader yields `PairSample`s; every method turns one into predicted target points in the
target's ORIGINAL pixels. Methods register a factory under a name at import time; `eval pck`
imports the modules named in `METHOD_MODULES` so that they do, then builds one by name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import CleanDiftError

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

METHODS: dict[str, MethodFactory] = {}

METHOD_MODULES: tuple[str, ...] = (
    "cleandift_deploy.eval.features",  # "features": one artifact, one tap
    "cleandift_deploy.eval.descriptor_method",  # "descriptor": presets over SD (+ DINOv2)
    "cleandift_deploy.hedlin.method",  # "hedlin": prompt-optimised attention (Hedlin et al.)
    "cleandift_deploy.hyperfeatures.method",  # "hyperfeatures": Diffusion Hyperfeatures
)
"""Modules imported before building a method, so that each registers its methods."""


def register_method(name: str, factory: MethodFactory) -> None:
    """Make `factory` available as `--method NAME` (a later registration replaces an earlier)."""
    METHODS[name] = factory


def import_method_modules() -> None:
    """Import every module of `METHOD_MODULES` (heavy imports stay inside their factories)."""
    for module in METHOD_MODULES:
        importlib.import_module(module)


def build_method(name: str, options: MethodOptions) -> Method:
    """The method registered as `name`, built with `options`."""
    import_method_modules()
    if name not in METHODS:
        known = ", ".join(sorted(METHODS)) or "none"
        raise CleanDiftError(f"unknown method {name!r}: choose one of {known}")
    return METHODS[name](options)
