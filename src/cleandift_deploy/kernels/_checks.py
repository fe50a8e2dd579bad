"""Input validation shared by the matching entry points.

Every check raises ``ValueError`` with one message that says what was wrong and what to pass
instead, so a caller never has to decode a shape error from deep inside a matmul.
"""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def finite_flags(*tensors: torch.Tensor) -> torch.Tensor:
    """One bool per tensor, on the tensors' device, computed without a host sync: one
    ``aminmax`` reduction each (NaN propagates into min and max, +-Inf shows in one of them; no
    input-sized temporary and no overflow, unlike a sum)."""
    bounds = [torch.stack(torch.aminmax(x)).float() for x in tensors]
    return torch.isfinite(torch.stack(bounds)).all(dim=1)


def check_finite(named: dict[str, torch.Tensor]) -> None:
    """Refuse NaN or Inf in any of the named tensors with ONE host sync when all are finite (a
    second read names the culprit only on the error path)."""
    flags = finite_flags(*named.values())
    if bool(flags.all()):
        return
    bad = [name for name, ok in zip(named, flags.tolist(), strict=True) if not ok]
    raise ValueError(f"{bad[0]} contains NaN or Inf; fix the features before matching")


def check_features(x: torch.Tensor, name: str, ndim: int, layout: str) -> None:
    """Check a feature tensor's rank, dtype and size (finiteness: ``check_finite``, once for all
    inputs, so a call costs one host sync)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {layout}, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have shape {layout}, got {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"{name} must be float32, float16 or bfloat16, got {x.dtype}; cast it first"
        )
    if any(s == 0 for s in x.shape):
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")


def check_same_channels(a: torch.Tensor, b: torch.Tensor, dim_a: int, dim_b: int) -> None:
    """Both operands must have the same channel count and live on the same device."""
    if a.shape[dim_a] != b.shape[dim_b]:
        raise ValueError(
            f"channel mismatch: {a.shape[dim_a]} vs {b.shape[dim_b]}; "
            "match features taken from the same layer"
        )
    if a.device != b.device:
        raise ValueError(f"inputs are on different devices ({a.device}, {b.device}); move one")


def check_size(size: tuple[int, int], name: str) -> tuple[int, int]:
    """Check an image size given as (H, W) and return it as a tuple of ints."""
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise ValueError(f"{name} must be (H, W) with positive integers, got {size!r}")
    return int(size[0]), int(size[1])


def check_points(points: torch.Tensor, size: tuple[int, int]) -> None:
    """Points are [K,2] (x, y) inside the image: -0.5 <= x < W - 0.5, same for y with H."""
    if not isinstance(points, torch.Tensor) or points.ndim != 2 or points.shape[1] != 2:
        shape = tuple(points.shape) if isinstance(points, torch.Tensor) else type(points).__name__
        raise ValueError(f"points must be a [K,2] tensor of (x, y) pixels, got {shape}")
    if points.shape[0] == 0:
        raise ValueError("points is empty; pass at least one (x, y) point")
    p = points.double()
    if not bool(torch.isfinite(p).all()):
        raise ValueError("points contain NaN or Inf")
    h, w = size
    inside = (p[:, 0] >= -0.5) & (p[:, 0] < w - 0.5) & (p[:, 1] >= -0.5) & (p[:, 1] < h - 0.5)
    if not bool(inside.all()):
        bad = int((~inside).nonzero()[0, 0])
        x, y = p[bad].tolist()
        raise ValueError(
            f"point {bad} = (x={x}, y={y}) is outside the source image of size (H={h}, W={w}); "
            "points are (x, y) pixel coordinates with 0 <= x <= W-1 and 0 <= y <= H-1"
        )
