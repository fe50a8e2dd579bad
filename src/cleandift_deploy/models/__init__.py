"""Model layer: architecture configs, loading, the tap-truncated FeatureUNet and the image side.

The names are imported on first use, so a light submodule (`configs`, `taps`) can be read without
importing torch and diffusers (the command line lists its commands that way).

Also the exportable graph (`graph_module`, `graph_options`, `graph_shapes`, `dinov2_graph`)
and `provenance` (reload the weights a manifest names, checked by hash).
May import: kernels, manifest, atomic, values, errors.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .configs import ARCHS, ArchConfig, get_arch
    from .feature_unet import FeatureUNet
    from .image_model import ImageFeatureModel, VAEEncoder
    from .loading import LoadedUNet, build_unet, build_vae, load_unet, load_vae, random_unet
    from .prompt import encode_prompt, prompt_embedding, random_prompt_embedding
    from .shapes import check_image_size, check_latent_size
    from .taps import (
        DEFAULT_TIMESTEP,
        TAP_NAMES,
        TapSpec,
        deepest_tap,
        tap_infos,
        tap_specs,
        validate_taps,
    )

_HOMES = {
    "configs": ("ARCHS", "ArchConfig", "get_arch"),
    "feature_unet": ("FeatureUNet",),
    "image_model": ("ImageFeatureModel", "VAEEncoder"),
    "loading": ("LoadedUNet", "build_unet", "build_vae", "load_unet", "load_vae", "random_unet"),
    "prompt": ("encode_prompt", "prompt_embedding", "random_prompt_embedding"),
    "shapes": ("check_image_size", "check_latent_size"),
    "taps": (
        "DEFAULT_TIMESTEP",
        "TAP_NAMES",
        "TapSpec",
        "deepest_tap",
        "tap_infos",
        "tap_specs",
        "validate_taps",
    ),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "ARCHS",
    "DEFAULT_TIMESTEP",
    "TAP_NAMES",
    "ArchConfig",
    "FeatureUNet",
    "ImageFeatureModel",
    "LoadedUNet",
    "TapSpec",
    "VAEEncoder",
    "build_unet",
    "build_vae",
    "check_image_size",
    "check_latent_size",
    "deepest_tap",
    "encode_prompt",
    "get_arch",
    "load_unet",
    "load_vae",
    "prompt_embedding",
    "random_prompt_embedding",
    "random_unet",
    "tap_infos",
    "tap_specs",
    "validate_taps",
]


def __getattr__(name: str) -> Any:
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
