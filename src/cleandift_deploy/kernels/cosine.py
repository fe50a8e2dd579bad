"""The one definition of cosine similarity used by every implementation.

A vector's norm is clamped below by ``EPS`` (as ``torch.nn.functional.normalize`` does), so a zero
vector has cosine 0 with everything instead of NaN.
"""

from __future__ import annotations

import torch

EPS = 1e-12
NORM_ROWS = 1024


def inverse_norms(x: torch.Tensor) -> torch.Tensor:
    """Row-wise ``1 / max(||x_i||, EPS)`` in float32 for a [N, C] tensor.

    Done in row chunks: the norm kernel may hold a temporary as large as its input.
    """
    norms = [torch.linalg.vector_norm(part.float(), dim=1) for part in x.split(NORM_ROWS)]
    return torch.cat(norms).clamp_min(EPS).reciprocal()


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """Float32 copy of a [N, C] tensor with unit rows (zero rows stay zero)."""
    return x.float() * inverse_norms(x)[:, None]
