"""Cross-attention probabilities captured through diffusers attention processors.

A `CaptureProcessor` replaces the processor of the chosen `attn2` modules for the duration of a
`capture_cross_attention` block: it computes the attention exactly as diffusers' `AttnProcessor`
(via the module's own `to_q`, `to_k`, `get_attention_scores`), keeps the probabilities, and
returns the same output. No module internals are patched; the original processors come back on
exit.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention

from ...errors import CleanDiftError
from .settings import LayerRef


class CaptureProcessor:
    """Computes attention like `AttnProcessor` and keeps `probs` `[B, heads, queries, keys]`."""

    def __init__(self) -> None:
        self.probs: torch.Tensor | None = None

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """The attention output; the probabilities are stored on the side."""
        if attn.spatial_norm is not None or attn.group_norm is not None or hidden_states.ndim != 3:
            raise CleanDiftError("attention capture supports SD transformer attention only")
        residual = hidden_states
        batch, queries = hidden_states.shape[0], hidden_states.shape[1]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, mask)
        self.probs = probs.reshape(batch, attn.heads, queries, -1)
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def cross_attention(unet: UNet2DConditionModel, layer: LayerRef) -> Attention:
    """`up_blocks[i].attentions[j].transformer_blocks[0].attn2`, or a one-line error."""
    block, index = layer
    attentions = (
        getattr(unet.up_blocks[block], "attentions", None) if block < len(unet.up_blocks) else None
    )
    if attentions is None or not 0 <= index < len(attentions):
        raise CleanDiftError(
            f"this UNet has no cross-attention at up_blocks[{block}].attentions[{index}]: "
            "choose layers among its CrossAttnUpBlock2D attentions"
        )
    module = attentions[index].transformer_blocks[0].attn2
    if not isinstance(module, Attention) or not module.is_cross_attention:
        raise CleanDiftError(f"up_blocks[{block}].attentions[{index}] has no cross-attention")
    return module


@contextmanager
def capture_cross_attention(
    unet: UNet2DConditionModel, layers: Sequence[LayerRef]
) -> Iterator[list[CaptureProcessor]]:
    """Install one `CaptureProcessor` per layer (in `layers` order); restore on exit."""
    modules = [cross_attention(unet, layer) for layer in layers]
    previous = [module.processor for module in modules]
    processors = [CaptureProcessor() for _ in modules]
    try:
        for module, processor in zip(modules, processors, strict=True):
            module.set_processor(processor)
        yield processors
    finally:
        for module, old in zip(modules, previous, strict=True):
            module.set_processor(old)


def select_heads(probs: torch.Tensor, heads: str) -> torch.Tensor:
    """`[B, h, Q, K]` -> the heads kept: the second half ("reference") or all."""
    return probs[:, probs.shape[1] // 2 :] if heads == "reference" else probs


def token_map(probs: torch.Tensor, token: int, heads: str) -> torch.Tensor:
    """`[B, h, Q, K]` -> `[B, s, s]`: one token's probability, mean over the kept heads."""
    side = math.isqrt(probs.shape[2])
    if side * side != probs.shape[2]:
        raise CleanDiftError(f"attention over {probs.shape[2]} queries is not a square map")
    kept = select_heads(probs, heads)[..., token].mean(dim=1)
    return kept.reshape(probs.shape[0], side, side)
