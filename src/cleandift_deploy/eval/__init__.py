"""Evaluation: dataset readers (SPair, PF-PASCAL, PF-WILLOW, image folders, synthetic warps),
PCK metrics, the feature cache, reports, and the protocol a method implements (`protocol`).

May import: train, export, runtime, descriptors, models, kernels, manifest, atomic, values,
errors. The methods themselves live above, in `cleandift_deploy.methods`.
"""

from .pck import pck
from .synthetic import WarpedPair, textured_image, visible_points, warped_pair

__all__ = ["WarpedPair", "pck", "textured_image", "visible_points", "warped_pair"]
