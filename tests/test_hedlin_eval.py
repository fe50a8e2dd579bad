"""`--method hedlin` through the evaluator: settings, errors, and the CLI on a synthetic set."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from cleandift_deploy.cli import main
from cleandift_deploy.errors import CleanDiftError
from cleandift_deploy.eval.datasets import load_pairs
from cleandift_deploy.eval.photoset import make_synthetic
from cleandift_deploy.eval.protocol import MethodOptions
from cleandift_deploy.methods.registry import build_method
from cleandift_deploy.runtime.images import read_image

SMALL = {"steps": "2", "inits": "2", "readout_crops": "5"}


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("syn")
    make_synthetic(out, {"test": 2}, seed=4)
    return out


def test_the_method_predicts_what_the_matcher_does(synthetic: Path) -> None:
    options = MethodOptions(arch="tiny", random_init=True, settings=dict(SMALL), seed=2)
    method = build_method("hedlin", options)
    sample = load_pairs(synthetic, "spair", "test", limit=1)[0]
    points = sample.source_points[:3]
    sample = type(sample)(**{**sample.__dict__, "source_points": points})
    predicted = method.predict(sample)
    direct = method.matcher.match(  # type: ignore[attr-defined]
        read_image(sample.source_path),
        read_image(sample.target_path),
        points,
        stream=zlib.crc32(sample.pair_id.encode()),
    ).points
    np.testing.assert_array_equal(predicted, direct)
    width, height = sample.target_size
    assert predicted.shape == (3, 2)
    assert (predicted >= 0).all() and (predicted <= [width, height]).all()
    described = method.describe()
    assert described["settings"]["steps"] == 2 and described["settings"]["size"] == 64
    assert described["settings"]["layers"] == ["1.0", "1.1", "1.2", "2.0"]


def test_unknown_settings_and_missing_model_are_one_line_errors() -> None:
    with pytest.raises(CleanDiftError, match="unknown hedlin setting"):
        build_method("hedlin", MethodOptions(arch="tiny", random_init=True, settings={"x": "1"}))
    with pytest.raises(CleanDiftError, match="SOURCE"):
        build_method("hedlin", MethodOptions())


def test_eval_pck_runs_the_hedlin_method(
    synthetic: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "res"
    args = ["eval", "pck", "--data", str(synthetic), "--dataset", "spair", "--method", "hedlin"]
    args += ["--arch", "tiny", "--random-init", "--limit", "2"]
    for key, value in {**SMALL, "steps": "1"}.items():
        args += ["--set", f"{key}={value}"]
    main([*args, "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    assert results["pairs"] == 2 and results["model"]["method"] == "hedlin"
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 2
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--out", str(tmp_path / "x"), "--set", "heads=2"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().startswith("error: heads must be")
