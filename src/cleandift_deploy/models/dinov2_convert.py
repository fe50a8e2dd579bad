"""`convert-dinov2`: the official DINOv2 `.pth` checkpoints to safetensors in the hub's layout.

The names written are those of the `facebook/dinov2-*` folders on the hub and of transformers'
`save_pretrained` (`attention.attention.query`, `attention.output.dense`, `mlp.weights_in`, ...):
every supported transformers version reads that layout (5.x converts it to its renamed in-memory
modules on load), so a file converted under one version loads under another.

The official files are pickles. This explicit step is the only place one is opened, and only with
`torch.load(weights_only=True)`, which restores tensors and refuses code; everything else in the
toolkit reads safetensors.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..atomic import atomic_path, refuse_existing
from ..errors import CleanDiftError

_BLOCK = re.compile(r"^blocks\.(?:\d+\.)?(\d+)\.(.+)$")
"""`blocks.{i}.` or, in checkpoints saved with block chunks, `blocks.{chunk}.{i}.`."""
_TOP = {
    "cls_token": "embeddings.cls_token",
    "pos_embed": "embeddings.position_embeddings",
    "mask_token": "embeddings.mask_token",
    "register_tokens": "embeddings.register_tokens",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
    "norm.weight": "layernorm.weight",
    "norm.bias": "layernorm.bias",
}
_IN_BLOCK = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attn.proj": "attention.output.dense",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.w12": "mlp.weights_in",
    "mlp.w3": "mlp.weights_out",
    "ls1.gamma": "layer_scale1.lambda1",
    "ls2.gamma": "layer_scale2.lambda1",
}
_SPLIT = {
    "attn.qkv": (
        "attention.attention.query",
        "attention.attention.key",
        "attention.attention.value",
    ),
}
"""Fused official weights split along the output axis, in this order (the SwiGLU `w12` stays
fused: the hub layout keeps it as `weights_in`)."""


def _block_keys(index: str, rest: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    prefix = f"encoder.layer.{index}."
    if rest in _IN_BLOCK:
        return {prefix + _IN_BLOCK[rest]: tensor}
    module, _, kind = rest.rpartition(".")
    if module in _IN_BLOCK:
        return {f"{prefix}{_IN_BLOCK[module]}.{kind}": tensor}
    if module in _SPLIT:
        targets = _SPLIT[module]
        parts = tensor.chunk(len(targets), dim=0)
        return {f"{prefix}{t}.{kind}": p.contiguous() for t, p in zip(targets, parts, strict=True)}
    raise CleanDiftError(f"unknown DINOv2 block weight {rest!r}: is this an official checkpoint?")


def official_to_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official (facebookresearch/dinov2) key names and fused tensors -> the hub layout."""
    converted: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        match = _BLOCK.match(key)
        if match:
            converted.update(_block_keys(match.group(1), match.group(2), tensor))
        elif key in _TOP:
            converted[_TOP[key]] = tensor
        else:
            raise CleanDiftError(
                f"unknown DINOv2 weight {key!r}: convert a backbone checkpoint (dinov2_vit*14*.pth)"
            )
    if "embeddings.mask_token" in converted:
        converted["embeddings.mask_token"] = converted["embeddings.mask_token"].reshape(1, -1)
    return converted


def convert_official(pth: Path, out: Path, force: bool = False) -> int:
    """Read an official `.pth` with `weights_only=True` and write safetensors; returns #tensors."""
    from safetensors.torch import save_file

    refuse_existing(out, force)
    if not pth.is_file():
        raise CleanDiftError(f"{pth} does not exist: give the official dinov2_vit*14*.pth file")
    try:
        state = torch.load(str(pth), map_location="cpu", weights_only=True)
    except Exception as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CleanDiftError(f"cannot read {pth} as a weights-only checkpoint ({reason})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CleanDiftError(f"{pth} is not a plain state dict of tensors")
    converted = official_to_transformers(state)
    with atomic_path(out) as temporary:
        save_file({k: v.contiguous() for k, v in converted.items()}, str(temporary))
    return len(converted)
