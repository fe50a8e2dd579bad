"""Descriptors: pure tensor functions that turn backbone features into matching descriptors.

co-PCA (exact or sd-dino's randomised one) and fitted PCA bases, multi-layer resize-and-concat,
part-wise normalisation, and the named presets `dift`, `cleandift`, `sd-dino`, `geoaware`.
No model code lives here: inputs are feature maps from any backend.

May import: models, kernels, manifest, atomic, values, errors (pure tensor code; no runtime).
"""

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
from .presets import PRESETS, Preset, describe, describe_pair, fuse, get_preset

__all__ = [
    "PCA_METHODS",
    "PRESETS",
    "PcaBasis",
    "Preset",
    "co_pca",
    "co_pca_maps",
    "describe",
    "describe_pair",
    "fuse",
    "get_preset",
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
