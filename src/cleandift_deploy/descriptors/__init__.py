"""Descriptors: pure tensor functions that turn backbone features into matching descriptors.

co-PCA (exact or sd-dino's randomised one) and fitted PCA bases, multi-layer resize-and-concat,
part-wise normalisation, and the `Preset` type (the named presets are entries of
`cleandift_deploy.methods.catalog`).
No model code lives here: inputs are feature maps from any backend.

May import: models, kernels, manifest, atomic, values, errors (pure tensor code; no runtime).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .layers import normalise_parts, progressive_concat, resize_concat, resize_map, unit_tokens
    from .pca import (
        PCA_METHODS,
        PcaBasis,
        co_pca,
        co_pca_maps,
        load_bases,
        principal_components,
        save_bases,
        sign_fixed,
    )
    from .presets import Preset, describe, describe_pair, fuse

_HOMES = {
    "layers": (
        "normalise_parts",
        "progressive_concat",
        "resize_concat",
        "resize_map",
        "unit_tokens",
    ),
    "pca": (
        "PCA_METHODS",
        "PcaBasis",
        "co_pca",
        "co_pca_maps",
        "load_bases",
        "principal_components",
        "save_bases",
        "sign_fixed",
    ),
    "presets": ("Preset", "describe", "describe_pair", "fuse"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "PCA_METHODS",
    "PcaBasis",
    "Preset",
    "co_pca",
    "co_pca_maps",
    "describe",
    "describe_pair",
    "fuse",
    "load_bases",
    "normalise_parts",
    "principal_components",
    "progressive_concat",
    "resize_concat",
    "resize_map",
    "save_bases",
    "sign_fixed",
    "unit_tokens",
]


def __getattr__(name: str) -> Any:
    """Names are imported on first use, so the `Preset` type can be read without torch."""
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
