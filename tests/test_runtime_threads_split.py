"""Thread counts: both CPU engines default to the physical cores, and several models or replicas on
one machine share them out instead of each taking all of them."""

from __future__ import annotations

from pathlib import Path

import pytest
from runtime_helpers import export_tiny

from cleandift_deploy.cli.serve import share_threads
from cleandift_deploy.models.loading import LoadedUNet
from cleandift_deploy.runtime import threads
from cleandift_deploy.runtime.extractor import FeatureExtractor
from cleandift_deploy.runtime.openvino_backend import CACHE_ENV
from cleandift_deploy.serve.app import ServeConfig
from cleandift_deploy.serve.hub import AppConfig


@pytest.mark.parametrize(("cores", "workers", "expected"), [(8, 1, 8), (8, 3, 2), (2, 4, 1)])
def test_cores_are_shared_out(
    monkeypatch: pytest.MonkeyPatch, cores: int, workers: int, expected: int
) -> None:
    monkeypatch.setattr(threads, "physical_cores", lambda: cores)
    assert threads.threads_per_worker(workers) == expected


def test_served_models_share_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "physical_cores", lambda: 16)
    config = AppConfig((ServeConfig("a.onnx"), ServeConfig("b.onnx")))
    assert [m.threads for m in share_threads(config, 2).models] == [8, 8]
    assert [m.threads for m in share_threads(config, 2 * 3).models] == [2, 2]
    given = AppConfig((ServeConfig("a.onnx", threads=5),))
    assert share_threads(given, 4).models[0].threads == 5


def test_both_engines_default_to_the_physical_cores(
    tiny: LoadedUNet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "openvino"))
    onnx_path = export_tiny(tiny, tmp_path / "tiny.onnx", image_size=(64, 64))
    ov = FeatureExtractor.load(onnx_path, backend="openvino")
    assert ov.backend.model.config["INFERENCE_NUM_THREADS"] == threads.physical_cores()  # type: ignore[attr-defined]
    ort = FeatureExtractor.load(onnx_path, backend="onnxruntime")
    options = ort.backend.session.get_session_options()  # type: ignore[attr-defined]
    assert options.intra_op_num_threads == threads.physical_cores()
