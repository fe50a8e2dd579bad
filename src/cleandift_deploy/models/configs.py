"""Architecture configs: the real SD 1.5 / 2.1 UNet, VAE and text-encoder shapes, and a tiny model.

Weights cannot be downloaded here, so full-size models are built from these configs with random
weights for size and speed work; `tiny` is a few MB and serves tests and the demo.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from ..errors import CleanDiftError

_SD_DOWN = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
_SD_UP = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]

_SD_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "scaling_factor": 0.18215,
}


@dataclass(frozen=True)
class ArchConfig:
    """The configs of one model family: UNet, VAE and (optional) CLIP text encoder."""

    name: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any] = field(default_factory=dict)
    image_size: int = 512

    def unet_config(self) -> dict[str, Any]:
        """A fresh copy of the UNet config, safe to mutate."""
        return copy.deepcopy(self.unet)


SD15 = ArchConfig(
    name="sd15",
    unet={
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": _SD_DOWN,
        "up_block_types": _SD_UP,
        "block_out_channels": [320, 640, 1280, 1280],
        "layers_per_block": 2,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    },
    vae={**_SD_VAE, "sample_size": 512},
    text_encoder={
        "vocab_size": 49408,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "projection_dim": 768,
    },
    image_size=512,
)

SD21 = ArchConfig(
    name="sd21",
    unet={
        **SD15.unet,
        "sample_size": 96,
        "cross_attention_dim": 1024,
        "attention_head_dim": [5, 10, 20, 20],
        "use_linear_projection": True,
        "upcast_attention": True,
    },
    vae={**_SD_VAE, "sample_size": 768},
    text_encoder={
        "vocab_size": 49408,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 23,
        "num_attention_heads": 16,
        "max_position_embeddings": 77,
        "hidden_act": "gelu",
        "projection_dim": 512,
    },
    image_size=768,
)

TINY = ArchConfig(
    name="tiny",
    unet={
        "sample_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": _SD_DOWN,
        "up_block_types": _SD_UP,
        "block_out_channels": [32, 32, 64, 64],
        "layers_per_block": 2,
        "cross_attention_dim": 32,
        "attention_head_dim": 8,
        "norm_num_groups": 8,
    },
    vae={
        **_SD_VAE,
        "block_out_channels": [16, 32, 32, 32],
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "sample_size": 64,
    },
    text_encoder={
        "vocab_size": 64,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "hidden_act": "gelu",
        "projection_dim": 32,
    },
    image_size=64,
)

ARCHS: dict[str, ArchConfig] = {a.name: a for a in (TINY, SD15, SD21)}


DEFAULT_IMAGE_SIZE = 512
"""Image side for models of no known architecture."""


def default_image_size(arch: str) -> int:
    """The image side an architecture was trained at (512 for custom ones)."""
    return ARCHS[arch].image_size if arch in ARCHS else DEFAULT_IMAGE_SIZE


def get_arch(name: str) -> ArchConfig:
    """The named architecture, or a one-line error listing the known ones."""
    try:
        return ARCHS[name]
    except KeyError:
        raise CleanDiftError(
            f"unknown architecture {name!r}: use one of {', '.join(ARCHS)}"
        ) from None
