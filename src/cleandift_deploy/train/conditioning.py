"""Text conditioning during training: one embedding per caption, the fixed prompt otherwise.

Real pipelines embed captions with their own text encoder, loaded once; captions are embedded per
batch, the fixed prompt once. Random-weight models have no text encoder: every image then gets the
same fixed random embedding, and captions cannot change anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..errors import CleanDiftError
from ..models.prompt import PromptEncoder, random_prompt_embedding


class Conditioning:
    """`captions -> encoder_hidden_states [B, 77, D]`, with `None` meaning the fixed prompt."""

    def __init__(
        self,
        root: Path | None,
        arch: str,
        prompt: str = "",
        *,
        use_captions: bool = True,
        random_init: bool = False,
    ) -> None:
        self.prompt, self.use_captions = prompt, use_captions
        self._encoder: PromptEncoder | None = None
        if root is not None and (root / "text_encoder").is_dir():
            self._encoder = PromptEncoder(root)
            self._fixed = self._encoder([prompt])
        elif random_init:
            self._fixed = random_prompt_embedding(arch)
        else:
            raise CleanDiftError(
                "no text_encoder/ beside the teacher to embed captions: give a pipeline folder, "
                "or use --random-init"
            )

    @property
    def has_text_encoder(self) -> bool:
        """False for random-weight models, where captions and --prompt are ignored."""
        return self._encoder is not None

    def __call__(self, captions: Sequence[str | None]) -> torch.Tensor:
        """The embeddings of a batch: `[1, 77, D]` when all share one prompt, else `[B, 77, D]`."""
        texts = [c if c is not None and self.use_captions else self.prompt for c in captions]
        if self._encoder is None or all(t == self.prompt for t in texts):
            return self._fixed
        return self._encoder(texts)
