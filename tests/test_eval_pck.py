"""PCK conventions and aggregates against hand-computed cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cleandift_deploy.errors import CleanDiftError
from cleandift_deploy.eval.pck import aggregate, alpha_key, pair_score, reference_length
from cleandift_deploy.eval.protocol import PairSample


def sample(category: str, truth: list[list[float]], bbox, size=(200, 80)) -> PairSample:
    points = np.array(truth, dtype=np.float64)
    return PairSample(
        f"{category}{len(truth)}", category, Path("s.jpg"), Path("t.jpg"), (90, 90), size,
        points.copy(), points, None, bbox,
    )  # fmt: skip


def shifted(pair: PairSample, distances: list[float]) -> np.ndarray:
    """Predictions `distances` pixels to the right of the truth."""
    return pair.target_points + np.stack([distances, np.zeros(len(distances))], axis=1)


@pytest.fixture
def three_pairs() -> tuple[list[PairSample], list[np.ndarray]]:
    a = sample("a", [[0, 0], [10, 0], [0, 40]], (0, 0, 100, 50))  # bbox 100, img 200, kps 40
    b = sample("a", [[5, 5]], (0, 0, 20, 20))  # bbox 20
    c = sample("b", [[1, 1], [30, 2]], (10, 10, 60, 30))  # bbox 50
    return [a, b, c], [shifted(a, [3, 8, 12]), shifted(b, [1]), shifted(c, [4, 6])]


def test_reference_lengths_per_convention(three_pairs) -> None:
    a = three_pairs[0][0]
    assert reference_length(a, "bbox") == 100
    assert reference_length(a, "img") == 200
    assert reference_length(a, "kps") == 40
    with pytest.raises(CleanDiftError, match="no target bounding box"):
        reference_length(sample("x", [[0, 0]], None), "bbox")


def test_aggregates_match_hand_computed_values(three_pairs) -> None:
    samples, predictions = three_pairs
    scores = [pair_score(s, p, "bbox") for s, p in zip(samples, predictions, strict=True)]
    result = aggregate(scores, (0.05, 0.1))
    assert list(result) == ["0.05", "0.1"]
    at = result["0.1"]  # hits: a [1,1,0], b [1], c [1,0]
    assert at["per_point"] == pytest.approx(4 / 6)
    assert at["per_image"] == pytest.approx((2 / 3 + 1 + 0.5) / 3)
    assert at["per_category"]["a"] == pytest.approx({"per_point": 0.75, "per_image": 5 / 6})
    assert at["per_category"]["b"] == pytest.approx({"per_point": 0.5, "per_image": 0.5})
    assert at["category_mean"] == pytest.approx({"per_point": 0.625, "per_image": 2 / 3})
    weighted = {"per_point": (2 * 0.75 + 0.5) / 3, "per_image": (2 * 5 / 6 + 0.5) / 3}
    assert at["pair_weighted"] == pytest.approx(weighted)
    low = result["0.05"]  # thresholds 5, 1, 2.5: hits a [1,0,0], b [1], c [0,0]
    assert low["per_point"] == pytest.approx(2 / 6)
    assert low["per_image"] == pytest.approx((1 / 3 + 1 + 0) / 3)


def test_image_and_keypoint_conventions_change_the_threshold(three_pairs) -> None:
    samples, predictions = three_pairs
    a, pred = samples[0], predictions[0]
    by_img = aggregate([pair_score(a, pred, "img")], (0.05,))["0.05"]  # threshold 10
    by_kps = aggregate([pair_score(a, pred, "kps")], (0.1,))["0.1"]  # threshold 4
    assert by_img["per_point"] == pytest.approx(2 / 3)
    assert by_kps["per_point"] == pytest.approx(1 / 3)


def test_wrong_prediction_shape_and_empty_input_are_refused(three_pairs) -> None:
    a = three_pairs[0][0]
    with pytest.raises(CleanDiftError, match="predicted"):
        pair_score(a, np.zeros((2, 2)), "bbox")
    with pytest.raises(CleanDiftError, match="no keypoints"):
        aggregate([], (0.1,))


def test_alpha_keys_are_short_strings() -> None:
    assert [alpha_key(a) for a in (0.01, 0.05, 0.1, 0.15)] == ["0.01", "0.05", "0.1", "0.15"]
