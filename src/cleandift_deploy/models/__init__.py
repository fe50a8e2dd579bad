"""Model layer: architecture configs, loading, the tap-truncated FeatureUNet and the image side."""

from .configs import ARCHS, ArchConfig, get_arch
from .feature_unet import DEFAULT_TIMESTEP, FeatureUNet
from .image_model import ImageFeatureModel, VAEEncoder
from .loading import LoadedUNet, build_unet, build_vae, load_unet, load_vae, random_unet
from .prompt import encode_prompt, prompt_embedding, random_prompt_embedding
from .shapes import check_image_size, check_latent_size
from .taps import TAP_NAMES, TapSpec, deepest_tap, tap_infos, tap_specs, validate_taps

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
