"""Multi-layer descriptors: bilinear resize-and-concatenate and part-wise normalisation.

All functions take single-image maps `[C, h, w]` and are plain tensor arithmetic, so the same
code serves the PyTorch reference and every exported backend's outputs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import CleanDiftError

EPS = 1e-12


def grid_of(feature_map: torch.Tensor) -> tuple[int, int]:
    """(h, w) of a [C, h, w] map."""
    return int(feature_map.shape[-2]), int(feature_map.shape[-1])


def resize_map(feature_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[C, h, w] bilinearly resized to `size` (align_corners=False, as the references)."""
    if tuple(feature_map.shape[1:]) == tuple(size):
        return feature_map
    return F.interpolate(
        feature_map[None].float(), size=size, mode="bilinear", align_corners=False
    )[0]


def resize_concat(maps: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Every map resized to `size`, concatenated along channels (GeoAware's [s3|s4|s5])."""
    if not maps:
        raise CleanDiftError("no feature maps to concatenate")
    return torch.cat([resize_map(m.float(), size) for m in maps])


def progressive_concat(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """sd-dino's order, finest first: the coarsest map is resized to the next one's size and
    appended to it, and so on up to the finest: [s3 | s4 | s5] from (s3, s4, s5)."""
    if not maps:
        raise CleanDiftError("no feature maps to concatenate")
    stacked = maps[-1].float()
    for finer in reversed(maps[:-1]):
        stacked = torch.cat([finer.float(), resize_map(stacked, grid_of(finer))])
    return stacked


def unit_tokens(feature_map: torch.Tensor) -> torch.Tensor:
    """[C, h, w] with every position's vector scaled to unit L2 length (zero stays zero)."""
    norms = feature_map.float().norm(dim=0, keepdim=True)
    return feature_map.float() / norms.clamp_min(EPS)


def normalise_parts(
    parts: Sequence[torch.Tensor],
    weights: Sequence[float] | None = None,
    renormalise: bool = False,
) -> torch.Tensor:
    """Part-wise normalisation: each part [C_i, h, w] L2-normalised per position and scaled by
    its weight, then concatenated; with `renormalise` the result is normalised again (GeoAware).

    The cosine of two such descriptors is then sum_i w_i^2 cos_i / sum_i w_i^2 (renormalised),
    so the weights set each part's share of the similarity (sd-dino: equal, alpha = 0.5).
    """
    if not parts:
        raise CleanDiftError("no descriptor parts to normalise")
    weights = [1.0] * len(parts) if weights is None else list(weights)
    if len(weights) != len(parts):
        raise CleanDiftError(f"{len(weights)} weights for {len(parts)} descriptor parts")
    sizes = {tuple(p.shape[1:]) for p in parts}
    if len(sizes) != 1:
        raise CleanDiftError(f"descriptor parts have different grids {sorted(sizes)}: resize first")
    fused = torch.cat([unit_tokens(p) * float(w) for p, w in zip(parts, weights, strict=True)])
    return unit_tokens(fused) if renormalise else fused
