"""Depth metrics per image, then averaged (probe3d `evals/utils/metrics.py` + DINOv2's AbsRel).

Valid pixels are those with ground truth > 0. delta_k = fraction with max(p/g, g/p) < 1.25^k;
RMSE = sqrt(mean((g - p)^2)); AbsRel = mean(|g - p| / g). Scale-aware: the prediction as is;
scale-invariant: the prediction after the per-image least-squares scale and shift that best fit
the ground truth on valid pixels (probe3d's `match_scale_and_shift`). Computed in float64 numpy
so a result can be recomputed exactly from the saved 16-bit PNGs.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

DEPTH_METRICS = ("rmse", "abs_rel", "d1", "d2", "d3")
FORMS = ("scale_aware", "scale_invariant")


def fit_scale_shift(prediction: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Least-squares (s, t) minimising sum over valid pixels of (s p + t - g)^2. A constant
    prediction (singular system) gets s = 1 and the shift to the image's mean depth, its best
    fit (probe3d leaves it unchanged), so a constant baseline is scored fairly in this form."""
    valid = truth > 0
    p = prediction[valid].astype(np.float64)
    g = truth[valid].astype(np.float64)
    a00, a01, a11 = float((p * p).sum()), float(p.sum()), float(valid.sum())
    b0, b1 = float((p * g).sum()), float(g.sum())
    det = a00 * a11 - a01 * a01
    if det == 0:
        return 1.0, (b1 - a01) / a11 if a11 else 0.0
    return (a11 * b0 - a01 * b1) / det, (-a01 * b0 + a00 * b1) / det


def depth_errors(prediction: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """RMSE, AbsRel and delta1-3 of one image on its valid pixels (prediction as given)."""
    valid = truth > 0
    if not valid.any():
        return dict.fromkeys(DEPTH_METRICS, float("nan"))
    p = prediction[valid].astype(np.float64)
    g = truth[valid].astype(np.float64)
    ratio = np.maximum(g / np.maximum(p, 1e-9), p / g)
    return {
        "rmse": float(np.sqrt(np.mean((g - p) ** 2))),
        "abs_rel": float(np.mean(np.abs(g - p) / g)),
        "d1": float(np.mean(ratio < 1.25)),
        "d2": float(np.mean(ratio < 1.25**2)),
        "d3": float(np.mean(ratio < 1.25**3)),
    }


def image_depth_metrics(prediction: np.ndarray, truth: np.ndarray) -> dict[str, dict[str, float]]:
    """Both forms for one image: `{"scale_aware": {...}, "scale_invariant": {...}}`."""
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction {prediction.shape} and truth {truth.shape} differ")
    scale, shift = fit_scale_shift(prediction, truth)
    return {
        "scale_aware": depth_errors(prediction, truth),
        "scale_invariant": depth_errors(prediction * scale + shift, truth),
    }


def mean_depth_metrics(
    per_image: Iterable[dict[str, dict[str, float]]],
) -> dict[str, dict[str, float]]:
    """The per-image metrics averaged over images (images without valid pixels skipped)."""
    rows = list(per_image)
    means: dict[str, dict[str, float]] = {}
    for form in FORMS:
        means[form] = {}
        for name in DEPTH_METRICS:
            values = [r[form][name] for r in rows if not np.isnan(r[form][name])]
            means[form][name] = float(np.mean(values)) if values else float("nan")
    return means
