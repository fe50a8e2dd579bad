"""Methods register by name; an unknown name is one clear error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cleandift_deploy.errors import CleanDiftError
from cleandift_deploy.eval.protocol import MethodOptions, PairSample
from cleandift_deploy.methods.registry import METHODS, build_method, register_method


class ShiftMethod:
    """Predicts every target point as its source point moved by a fixed offset."""

    name = "shift"

    def __init__(self, options: MethodOptions) -> None:
        self.offset = float(options.settings.get("offset", "0"))

    def describe(self) -> dict[str, Any]:
        return {"offset": self.offset}

    def predict(self, sample: PairSample) -> np.ndarray:
        return sample.source_points + self.offset


def sample() -> PairSample:
    points = np.random.default_rng(0).uniform(0, 50, size=(4, 2))
    return PairSample(
        "p0", "cat", Path("a.jpg"), Path("b.jpg"), (64, 48), (64, 48), points, points, None, None
    )


def test_a_registered_method_is_built_with_its_options() -> None:
    register_method("shift-test", ShiftMethod)
    try:
        method = build_method("shift-test", MethodOptions(settings={"offset": "2.5"}))
        pair = sample()
        np.testing.assert_allclose(method.predict(pair), pair.source_points + 2.5)
        assert method.describe() == {"offset": 2.5}
    finally:
        METHODS.pop("shift-test")


def test_an_unknown_method_names_the_known_ones() -> None:
    register_method("shift-test", ShiftMethod)
    try:
        with pytest.raises(CleanDiftError, match=r"unknown method 'nope'.*shift-test"):
            build_method("nope", MethodOptions())
    finally:
        METHODS.pop("shift-test")


def test_cli_option_parsers_refuse_bad_values() -> None:
    from cleandift_deploy.cli.eval import parse_alphas, parse_filters, parse_pairs

    assert parse_alphas("0.05, 0.1") == (0.05, 0.1)
    assert parse_pairs(("size=768", "resize=pad"), "--set") == {"size": "768", "resize": "pad"}
    assert parse_filters(("occlusion=0",)) == {"occlusion": 0}
    for bad in ("0.1,x", "1.5", ""):
        with pytest.raises(CleanDiftError, match="--alpha"):
            parse_alphas(bad)
    with pytest.raises(CleanDiftError, match="KEY=VALUE"):
        parse_pairs(("size",), "--set")
    with pytest.raises(CleanDiftError, match="integers"):
        parse_filters(("occlusion=yes",))
