"""Per-embedding random streams, so a batch of embeddings draws exactly what each would alone.

Every (keypoint, init) pair owns one generator per phase (optimisation, readout), seeded from
(seed, stream, keypoint, init, phase): its initial embedding, crops and noise are the same
whether it is optimised in a batch of fifty or on its own, as the reference loop does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

OPTIMISE, READOUT = 0, 1


def element_generator(
    seed: int, stream: int, keypoint: int, init: int, phase: int
) -> torch.Generator:
    """A CPU generator for one embedding and phase."""
    words = np.random.SeedSequence([seed, stream, keypoint, init, phase]).generate_state(2)
    return torch.Generator().manual_seed(int(words[0]) << 32 | int(words[1]))


def draw_noise(
    generators: Sequence[torch.Generator], shape: tuple[int, ...], kind: str
) -> torch.Tensor:
    """`[N, *shape]`: one noise tensor per generator, uniform [0, 1) (the reference's
    `rand_like`) or standard normal."""
    draw = torch.rand if kind == "uniform" else torch.randn
    return torch.stack([draw(shape, generator=g) for g in generators])
