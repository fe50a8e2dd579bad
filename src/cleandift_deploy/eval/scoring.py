"""Running a method over annotated pairs and scoring its predictions.

Pairs are visited grouped by target image, so a method that prepares something per target
(the features method's target field) does it once per target; predictions are reported in the
readers' order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

from ..errors import CleanDiftError
from .pck import PairScore, aggregate, pair_score
from .protocol import Method, PairSample


@dataclass
class Evaluation:
    """Every pair's prediction and score, in the order of `samples`, and the aggregates."""

    samples: list[PairSample]
    predictions: list[np.ndarray]
    scores: list[PairScore]
    pck: dict[str, Any]


def predict_all(
    method: Method, samples: Sequence[PairSample], show_progress: bool = True
) -> list[np.ndarray]:
    """The method's [K,2] prediction for every sample, visiting targets together."""
    order = sorted(range(len(samples)), key=lambda i: (str(samples[i].target_path), i))
    predictions: list[np.ndarray | None] = [None] * len(samples)
    columns = (*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeRemainingColumn(), disable=not show_progress) as progress:
        task = progress.add_task("matching pairs", total=len(samples))
        for index in order:
            predicted = np.asarray(method.predict(samples[index]), dtype=np.float64)
            if predicted.shape != samples[index].source_points.shape:
                raise CleanDiftError(
                    f"method {method.name} returned {predicted.shape} points for pair "
                    f"{samples[index].pair_id}, which has {len(samples[index].source_points)}"
                )
            predictions[index] = predicted
            progress.advance(task)
    return [p for p in predictions if p is not None]


def evaluate(
    method: Method,
    samples: Sequence[PairSample],
    alphas: Sequence[float],
    convention: str,
    show_progress: bool = True,
) -> Evaluation:
    """Predict every pair and score it by `convention` at every alpha."""
    predictions = predict_all(method, samples, show_progress)
    scores = [
        pair_score(sample, predicted, convention)
        for sample, predicted in zip(samples, predictions, strict=True)
    ]
    return Evaluation(list(samples), predictions, scores, aggregate(scores, alphas))
