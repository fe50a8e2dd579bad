"""The one definition of cosine similarity used by every implementation.

A vector's norm is clamped below by ``EPS`` (as ``torch.nn.functional.normalize`` does), so a zero
vector has cosine 0 with everything instead of NaN.
"""

from __future__ import annotations

import torch

EPS = 1e-12


def inverse_norms(x: torch.Tensor) -> torch.Tensor:
    """Row-wise ``1 / max(||x_i||, EPS)`` in float32 for a [N, C] tensor."""
    return torch.linalg.vector_norm(x.float(), dim=1).clamp_min(EPS).reciprocal()


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """Float32 copy of a [N, C] tensor with unit rows (zero rows stay zero)."""
    return x.float() * inverse_norms(x)[:, None]
