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

    One reduction over the whole tensor where that makes no input-sized temporary: float32
    inputs anywhere, and 16-bit inputs on a GPU (PyTorch's reductions read fp16/bf16 and
    accumulate in float32 there without a cast copy: ``make_reduction``'s ``gpu_lowp_to_f32``
    case). Only 16-bit inputs on the CPU, where ``dtype=float32`` casts the input first, go in
    ``NORM_ROWS``-row chunks.
    """
    if x.dtype == torch.float32 or x.device.type != "cpu":
        norms = torch.linalg.vector_norm(x, dim=1, dtype=torch.float32)
    else:
        norms = torch.cat([torch.linalg.vector_norm(p.float(), dim=1) for p in x.split(NORM_ROWS)])
    return norms.clamp_min_(EPS).reciprocal_()


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """Float32 copy of a [N, C] tensor with unit rows (zero rows stay zero)."""
    return x.float() * inverse_norms(x)[:, None]
