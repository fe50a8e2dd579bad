"""kNN classification on pooled features (the CleanDIFT paper's ImageNet protocol, DINO's vote).

Each image's tap is globally average-pooled and L2-normalised (CleanDIFT does not document its
pooling; this is the usual choice). For every query the k = 10 training images of highest cosine
similarity vote: "weighted" (DINO: weight exp(sim / 0.07) added to the neighbour's class) or
"majority" (one vote each; ties go to the class with the nearer neighbours: a rank bonus far
below one vote). Top-1 is the best-scored class, top-5: the true class is among the five best.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .cache import FeatureCache
from .imagefolder import LabelledImage

TEMPERATURE = 0.07


def pool(features: torch.Tensor) -> torch.Tensor:
    """`[B,C,h,w]` -> `[B,C]`: global average pooling, then L2 normalisation."""
    return F.normalize(features.float().mean(dim=(2, 3)), dim=1)


def class_scores(
    train: torch.Tensor,
    train_labels: torch.Tensor,
    queries: torch.Tensor,
    classes: int,
    k: int = 10,
    vote: str = "weighted",
    temperature: float = TEMPERATURE,
) -> torch.Tensor:
    """`[Q, classes]` vote totals for pooled, normalised `queries` against `train` [N,C]."""
    if vote not in ("weighted", "majority"):
        raise ValueError(f"unknown vote {vote!r}")
    k = min(k, train.shape[0])
    similarity = queries @ train.T
    top, index = similarity.topk(k, dim=1)
    neighbours = train_labels[index]
    if vote == "weighted":
        weights = torch.exp(top / temperature)
    else:
        # one vote each, plus a rank-decaying tie-break far below one vote
        ranks = torch.arange(k, dtype=torch.float64)
        weights = (1.0 + (k - ranks) * 1e-6).expand(top.shape[0], k)
    scores = torch.zeros(queries.shape[0], classes, dtype=torch.float64)
    scores.scatter_add_(1, neighbours, weights.double())
    return scores


def topk_accuracy(
    scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)
) -> dict[str, float]:
    """Fraction of queries whose label is among the `k` best-scored classes, per k."""
    found = {}
    for k in ks:
        best = scores.topk(min(k, scores.shape[1]), dim=1).indices
        found[f"top{k}"] = float((best == labels[:, None]).any(dim=1).double().mean())
    return found


def confusion_summary(
    scores: torch.Tensor, labels: torch.Tensor, names: list[str], worst: int = 5
) -> dict[str, object]:
    """Per-class top-1 accuracy and the most frequent (truth -> predicted) confusions."""
    predicted = scores.argmax(dim=1)
    per_class = {}
    for index, name in enumerate(names):
        mask = labels == index
        if mask.any():
            per_class[name] = float((predicted[mask] == index).double().mean())
    pairs: dict[tuple[int, int], int] = {}
    for t, p in zip(labels.tolist(), predicted.tolist(), strict=True):
        if t != p:
            pairs[(t, p)] = pairs.get((t, p), 0) + 1
    top = sorted(pairs.items(), key=lambda item: -item[1])[:worst]
    return {
        "per_class_top1": per_class,
        "confusions": [{"truth": names[t], "predicted": names[p], "count": c} for (t, p), c in top],
    }


def pooled_features(
    extractor: Any,
    images: Sequence[LabelledImage],
    cache: FeatureCache,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, torch.Tensor]:
    """`{tap: [N, C]}` pooled, normalised features of every image, one extraction per image
    (cached: a second run extracts nothing)."""
    from ..runtime.images import read_image

    parts = {
        "manifest": extractor.manifest_sha256,
        "backend": extractor.backend_name,
        "taps": ",".join(extractor.taps),
        "size": "x".join(map(str, extractor.image_size)),
        "resize": extractor.resize,
        "purpose": "knn-pooled",
    }
    rows: dict[str, list[torch.Tensor]] = {tap: [] for tap in extractor.taps}
    for index, item in enumerate(images):

        def compute(path: Path = item.path) -> dict[str, torch.Tensor]:
            with torch.inference_mode():
                taps = extractor.extract([read_image(path)]).taps
            return {tap: pool(value)[0] for tap, value in taps.items()}

        entry = cache.get_or_compute(parts, item.path, compute)
        for tap in extractor.taps:
            rows[tap].append(entry[tap])
        if on_progress is not None:
            on_progress(index + 1, len(images))
    return {tap: torch.stack(values) for tap, values in rows.items()}


def knn_results(
    train: dict[str, torch.Tensor],
    train_labels: torch.Tensor,
    val: dict[str, torch.Tensor],
    val_labels: torch.Tensor,
    names: list[str],
    k: int = 10,
) -> dict[str, Any]:
    """Top-1 / top-5 per tap for the weighted and the majority vote, and a confusion summary
    (weighted vote) per tap."""
    found: dict[str, Any] = {}
    for tap in train:
        row: dict[str, Any] = {}
        for vote in ("weighted", "majority"):
            scores = class_scores(train[tap], train_labels, val[tap], len(names), k, vote)
            row[vote] = topk_accuracy(scores, val_labels)
            if vote == "weighted":
                row["confusion"] = confusion_summary(scores, val_labels, names)
        found[tap] = row
    return found


def knn_markdown(results: dict[str, Any]) -> str:
    """One table row per tap: weighted and majority top-1 / top-5 in percent."""
    lines = [
        "| tap | weighted top-1 | weighted top-5 | majority top-1 | majority top-5 |",
        "|---|---|---|---|---|",
    ]
    for tap, row in results.items():
        w, m = row["weighted"], row["majority"]
        cells = [w["top1"], w["top5"], m["top1"], m["top5"]]
        lines.append(f"| {tap} | " + " | ".join(f"{100 * v:.2f}" for v in cells) + " |")
    return "\n".join(lines) + "\n"
