"""Fused cosine-similarity matching for diffusion features (no other part of the package needed).

``match_points`` matches query points exactly as upsample-then-match would, without building
upsampled maps; ``match_dense`` finds nearest / mutual nearest neighbours between two sets of
vectors with a blocked CPU path or a fused Triton kernel on the GPU.

May import: errors only (import-linter checks it).
"""

from .api import as_kornia_matches, match_dense, match_points
from .types import MutualMatches, NearestNeighbours, PointMatches

__all__ = [
    "MutualMatches",
    "NearestNeighbours",
    "PointMatches",
    "as_kornia_matches",
    "match_dense",
    "match_points",
]
