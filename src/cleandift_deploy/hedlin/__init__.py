"""Hedlin et al., "Unsupervised Semantic Correspondence Using Stable Diffusion" (NeurIPS 2023):
prompt embeddings optimised per source keypoint so that cross-attention peaks there, then read
out on the target. PyTorch only (an optimisation per query point); `--method hedlin` in eval."""

from .matcher import HedlinMatcher, Matches
from .settings import HedlinSettings, settings_from_strings

__all__ = ["HedlinMatcher", "HedlinSettings", "Matches", "settings_from_strings"]
