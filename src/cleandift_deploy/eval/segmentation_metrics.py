"""Semantic segmentation metrics: a confusion matrix accumulated over the split, then IoU per class
and their mean over the classes present (in truth or prediction), ignoring label 255."""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255


def confusion(truth: np.ndarray, prediction: np.ndarray, classes: int) -> np.ndarray:
    """`[classes, classes]` counts, rows = truth, columns = prediction; ignored pixels skipped.

    Truth labels outside [0, classes) other than 255 are an error (a wrong palette or class count).
    """
    if truth.shape != prediction.shape:
        raise ValueError(f"truth {truth.shape} and prediction {prediction.shape} differ")
    keep = truth != IGNORE_INDEX
    t = truth[keep].astype(np.int64)
    p = prediction[keep].astype(np.int64)
    if t.size and (t.min() < 0 or t.max() >= classes):
        raise ValueError(f"label {int(t.max())} outside 0..{classes - 1} (and not {IGNORE_INDEX})")
    return np.bincount(t * classes + p, minlength=classes * classes).reshape(classes, classes)


def iou_per_class(matrix: np.ndarray) -> np.ndarray:
    """IoU = TP / (TP + FP + FN) per class; NaN for a class absent from truth and prediction."""
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def segmentation_summary(matrix: np.ndarray) -> dict[str, object]:
    """mIoU (mean over present classes), pixel accuracy and IoU per class."""
    iou = iou_per_class(matrix)
    total = matrix.sum()
    return {
        "miou": float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"),
        "pixel_accuracy": float(np.trace(matrix) / total) if total else float("nan"),
        "iou": [None if np.isnan(v) else float(v) for v in iou],
    }
