"""Reference taps from forward hooks on the full diffusers UNet (residual-branch taps: hooks on
the ResNet's conv2), and small test configs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel

from cleandift_deploy.models.configs import TINY
from cleandift_deploy.models.taps import TAP_SITES

SMALL21: dict[str, Any] = {
    **TINY.unet,
    "block_out_channels": [32, 48, 64, 64],
    "cross_attention_dim": 48,
    "attention_head_dim": [2, 4, 4, 8],
    "norm_num_groups": 16,
    "use_linear_projection": True,
    "upcast_attention": True,
}
"""A second small config: other head counts, cross-attention width, linear projections, upcast."""


def _tap_module(unet: UNet2DConditionModel, name: str) -> torch.nn.Module:
    site = TAP_SITES[name]
    if site.block < 0:
        return unet.mid_block
    block = unet.up_blocks[site.block]
    if site.layer is None:
        return block
    if site.branch:
        return block.resnets[site.layer].conv2
    layers = block.attentions if getattr(block, "attentions", None) is not None else block.resnets
    return layers[site.layer]


def hooked_taps(
    unet: UNet2DConditionModel,
    latents: torch.Tensor,
    context: torch.Tensor,
    timestep: float,
    taps: tuple[str, ...],
) -> dict[str, torch.Tensor]:
    """Every tap captured by forward hooks while the full UNet runs: the independent reference."""
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for name in taps:

        def hook(_module: Any, _inputs: Any, output: Any, name: str = name) -> None:
            captured[name] = (
                output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
            )

        handles.append(_tap_module(unet, name).register_forward_hook(hook))
    try:
        with torch.no_grad():
            unet(latents, torch.tensor(timestep), context.expand(latents.shape[0], -1, -1))
    finally:
        for handle in handles:
            handle.remove()
    return captured


def tiny_text_pipeline(root: Path) -> None:
    """A tokenizer with a vocabulary made here and a tiny random CLIP text encoder, written as a
    pipeline's `tokenizer/` and `text_encoder/` under `root`."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab: dict[str, int] = {}
    for char in "abcdefghijklmnopqrstuvwxyz":
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=77
    )
    tokenizer.save_pretrained(str(root / "tokenizer"))
    config = CLIPTextConfig(**TINY.text_encoder, bos_token_id=52, eos_token_id=53, pad_token_id=53)
    torch.manual_seed(5)
    CLIPTextModel(config).save_pretrained(str(root / "text_encoder"), safe_serialization=True)
