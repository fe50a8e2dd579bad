"""PCK: the share of predicted keypoints within alpha times a reference length of the truth.

Three reference lengths (conventions), all measured in the TARGET image's original pixels:

- "bbox": max(w, h) of the target bounding box -- the SPair-71k default (DIFT, sd-dino,
  GeoAware-SC, Diffusion Hyperfeatures; Hedlin et al. use the source box instead);
- "img": max(W, H) of the target image -- PF-PASCAL, and SPair's "alpha_img";
- "kps": max extent of the target keypoints, max(x range, y range) -- PF-WILLOW (CATs, Hedlin).

Aggregates per alpha: per point (pooled over every point), per image (mean over pairs), the same
two per category, their mean over categories, and their pair-weighted mean over categories.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import CleanDiftError
from .protocol import PairSample

CONVENTIONS = ("bbox", "img", "kps")
DEFAULT_CONVENTION = {"spair": "bbox", "pfpascal": "img", "pfwillow": "kps"}
DEFAULT_ALPHAS = (0.01, 0.05, 0.1, 0.15)


def pck(predicted: np.ndarray, truth: np.ndarray, threshold: float) -> float:
    """Fraction of points with `||predicted - truth|| <= threshold` (pixels)."""
    if predicted.shape != truth.shape or predicted.ndim != 2 or predicted.shape[1] != 2:
        raise ValueError(f"need two [K,2] arrays; got {predicted.shape} and {truth.shape}")
    if len(truth) == 0:
        raise ValueError("no keypoints to score")
    distances = np.linalg.norm(predicted - truth, axis=1)
    return float((distances <= threshold).mean())


def reference_length(sample: PairSample, convention: str) -> float:
    """The length alpha multiplies, in original target pixels, by `convention`."""
    if convention == "bbox":
        if sample.target_bbox is None:
            raise CleanDiftError(
                f"pair {sample.pair_id} has no target bounding box: use --convention img or kps"
            )
        x1, y1, x2, y2 = sample.target_bbox
        return float(max(x2 - x1, y2 - y1))
    if convention == "img":
        return float(max(sample.target_size))
    if convention == "kps":
        extent = sample.target_points.max(axis=0) - sample.target_points.min(axis=0)
        return float(extent.max())
    raise CleanDiftError(f"unknown PCK convention {convention!r}: use one of {CONVENTIONS}")


@dataclass(frozen=True)
class PairScore:
    """One pair's point errors and the reference length its thresholds scale."""

    category: str
    distances: np.ndarray
    length: float


def pair_score(sample: PairSample, predicted: np.ndarray, convention: str) -> PairScore:
    """Distances of `predicted` to the sample's target points, with the convention's length."""
    if predicted.shape != sample.target_points.shape:
        raise CleanDiftError(
            f"pair {sample.pair_id}: the method predicted {predicted.shape} points for "
            f"{sample.target_points.shape} keypoints"
        )
    distances = np.linalg.norm(predicted - sample.target_points, axis=1)
    return PairScore(sample.category, distances, reference_length(sample, convention))


def _both(scores: Sequence[PairScore], alpha: float) -> dict[str, float]:
    hits = [s.distances <= alpha * s.length for s in scores]
    return {
        "per_point": float(np.concatenate(hits).mean()),
        "per_image": float(np.mean([h.mean() for h in hits])),
    }


def _over_categories(
    per_category: dict[str, dict[str, float]], counts: dict[str, int], weighted: bool
) -> dict[str, float]:
    weights = np.array([counts[c] if weighted else 1 for c in per_category], dtype=np.float64)
    return {
        kind: float(np.dot(weights, [v[kind] for v in per_category.values()]) / weights.sum())
        for kind in ("per_point", "per_image")
    }


def aggregate(scores: Iterable[PairScore], alphas: Sequence[float]) -> dict[str, Any]:
    """`{alpha: {per_point, per_image, per_category, category_mean, pair_weighted}}`, alpha
    keys as strings ("0.1"), PCK as fractions in [0, 1]."""
    scores = [s for s in scores if len(s.distances)]
    if not scores:
        raise CleanDiftError("no keypoints to score: check --split, --categories and --limit")
    categories = sorted({s.category for s in scores})
    grouped = {c: [s for s in scores if s.category == c] for c in categories}
    counts = {c: len(v) for c, v in grouped.items()}
    result: dict[str, Any] = {}
    for alpha in alphas:
        per_category = {c: _both(v, alpha) for c, v in grouped.items()}
        result[alpha_key(alpha)] = {
            **_both(scores, alpha),
            "per_category": per_category,
            "category_mean": _over_categories(per_category, counts, weighted=False),
            "pair_weighted": _over_categories(per_category, counts, weighted=True),
        }
    return result


def alpha_key(alpha: float) -> str:
    """The string key of an alpha: 0.1 -> "0.1", 0.15 -> "0.15"."""
    return repr(float(alpha))
