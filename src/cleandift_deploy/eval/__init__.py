"""Evaluation: PCK and synthetic warped pairs with known correspondences."""

from .pck import pck
from .synthetic import WarpedPair, textured_image, visible_points, warped_pair

__all__ = ["WarpedPair", "pck", "textured_image", "visible_points", "warped_pair"]
