"""Prompt conditioning: one embedding computed from the local text encoder, reused for every image.

CleanDIFT conditions on a caption embedding (the empty prompt by default); deployment bakes a fixed
one, so the text encoder never runs in production.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import CleanDiftError
from .configs import get_arch

PROMPT_LENGTH = 77


class PromptEncoder:
    """The pipeline's CLIP tokenizer and text encoder, loaded once to embed many prompts
    (training embeds one caption per image)."""

    def __init__(self, root: Path) -> None:
        from transformers import CLIPTextModel, CLIPTokenizer

        tokenizer_dir, encoder_dir = root / "tokenizer", root / "text_encoder"
        if not tokenizer_dir.is_dir() or not encoder_dir.is_dir():
            raise CleanDiftError(
                f"no tokenizer/ and text_encoder/ in {root}: give a pipeline folder, "
                "or pass the prompt embedding as a tensor"
            )
        self.tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
        self.encoder = CLIPTextModel.from_pretrained(str(encoder_dir), use_safetensors=True).eval()

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        """`[N, 77, D]` last hidden states, one row per prompt."""
        ids = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return self.encoder(ids)[0].float()


def encode_prompt(root: Path, prompt: str = "") -> torch.Tensor:
    """`[1, 77, D]` last hidden states of the pipeline's CLIP text encoder for `prompt`."""
    return PromptEncoder(root)([prompt])


def random_prompt_embedding(arch: str, seed: int = 0) -> torch.Tensor:
    """A fixed random `[1, 77, D]` embedding for random-weight models (no text encoder needed)."""
    width = int(get_arch(arch).unet["cross_attention_dim"])
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, PROMPT_LENGTH, width, generator=generator)


def prompt_embedding(
    root: Path | None, arch: str, prompt: str = "", *, random_init: bool = False
) -> torch.Tensor:
    """The embedding to bake: from the local text encoder, or random for random-weight models."""
    if root is not None and (root / "text_encoder").is_dir():
        return encode_prompt(root, prompt)
    if random_init:
        return random_prompt_embedding(arch)
    raise CleanDiftError(
        "no text_encoder/ beside the UNet to embed the prompt: give a pipeline folder, "
        "or take the embedding as a graph input (--prompt-input)"
    )
