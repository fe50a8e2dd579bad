"""The OpenVINO backend on the tiny model: agreement with PyTorch, per-size compiles, bf16 by name,
the IR cache, threads, and errors."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from runtime_helpers import TINY_TAPS, agreement, export_tiny, random_rgb

from cleandift_deploy.errors import CleanDiftError
from cleandift_deploy.models.loading import LoadedUNet
from cleandift_deploy.runtime.extractor import FeatureExtractor
from cleandift_deploy.runtime.openvino_backend import CACHE_ENV, OpenVINOBackend

FP32_COSINE = 0.99999
BF16_COSINE = 0.99


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path_factory.getbasetemp() / "openvino-cache"))


@pytest.fixture(scope="module")
def dynamic_onnx(tiny: LoadedUNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Batch 1..2, sizes 64..128 px, taps us3 and us6, weights in an external file."""
    out = tmp_path_factory.mktemp("openvino") / "tiny.onnx"
    return export_tiny(
        tiny,
        out,
        image_size=(64, 64),
        size_range=((64, 64), (128, 128)),
        batch=(1, 2, 2),
        external_data_threshold=0,
    )


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(torch.initial_seed())


def _images(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    return [
        random_rgb(int(rng.integers(50, 150)), int(rng.integers(50, 150)), rng)
        for _ in range(count)
    ]


def test_openvino_fp32_matches_pytorch_and_compiles_once_per_size(
    dynamic_onnx: Path, rng: np.random.Generator
) -> None:
    reference = FeatureExtractor.load(dynamic_onnx, backend="torch")
    openvino = FeatureExtractor.load(dynamic_onnx, backend="openvino")
    assert openvino.backend_name == "openvino-cpu"
    backend = openvino.backend
    assert isinstance(backend, OpenVINOBackend)
    assert backend.model.config["INFERENCE_PRECISION_HINT"] == "f32"
    for size in [(64, 64), (128, 64), (64, 64)]:
        ov_at, ref_at = (
            FeatureExtractor(e.backend, e.manifest, image_size=size) for e in (openvino, reference)
        )
        images = _images(rng, 3)  # a batch of 2 then 1: two shapes per size
        got, want = ov_at(images), ref_at(images)
        for tap in TINY_TAPS:
            assert got[tap].shape == want[tap].shape
            figures = agreement(want[tap], got[tap])
            assert figures["cosine_min"] >= FP32_COSINE, (size, tap, figures)
            assert figures["relative_l2"] < 1e-4, (size, tap, figures)
    assert sorted(shape[0] for shape in backend.model.compiled) == [
        (1, 3, 64, 64),
        (1, 3, 128, 64),
        (2, 3, 64, 64),
        (2, 3, 128, 64),
    ]


def test_bf16_by_name_agrees_loosely_and_differs_from_fp32(
    dynamic_onnx: Path, rng: np.random.Generator
) -> None:
    fp32 = FeatureExtractor.load(dynamic_onnx, backend="openvino")
    bf16 = FeatureExtractor.load(dynamic_onnx, backend="openvino-bf16")
    assert bf16.backend_name == "openvino-cpu-bf16"
    assert bf16.backend.model.config["INFERENCE_PRECISION_HINT"] == "bf16"  # type: ignore[attr-defined]
    images = _images(rng, 2)
    exact, rounded = fp32(images), bf16(images)
    for tap in TINY_TAPS:
        assert agreement(exact[tap], rounded[tap])["cosine_min"] >= BF16_COSINE


def _full_precision_irs(cache: Path) -> list[Path]:
    return sorted(p for p in cache.glob("tiny-*.xml") if not p.stem.endswith("-w16"))


def test_bf16_reads_an_ir_with_half_weights(dynamic_onnx: Path) -> None:
    FeatureExtractor.load(dynamic_onnx, backend="openvino")
    FeatureExtractor.load(dynamic_onnx, backend="openvino-bf16")
    cache = Path(os.environ[CACHE_ENV])
    full = _full_precision_irs(cache)[0].with_suffix(".bin").stat().st_size
    half = next(cache.glob("tiny-*-w16.bin")).stat().st_size
    assert 0.45 < half / full < 0.55


def test_the_ir_is_converted_once_and_reused(
    dynamic_onnx: Path, tmp_path: Path, rng: np.random.Generator
) -> None:
    first = FeatureExtractor.load(dynamic_onnx, backend="openvino")
    cache = Path(os.environ[CACHE_ENV])
    irs = _full_precision_irs(cache)
    assert len(irs) == 1 and irs[0].with_suffix(".bin").stat().st_size > 0
    stamp = irs[0].stat().st_mtime_ns
    second = FeatureExtractor.load(dynamic_onnx, backend="openvino")
    assert _full_precision_irs(cache) == irs and irs[0].stat().st_mtime_ns == stamp
    images = _images(rng, 1)
    assert torch.equal(first(images)["us6"], second(images)["us6"])


def test_threads_share_one_backend(dynamic_onnx: Path, rng: np.random.Generator) -> None:
    extractor = FeatureExtractor.load(dynamic_onnx, backend="openvino")
    inputs = [_images(rng, 2) for _ in range(4)]
    expected = [extractor(images)["us6"] for images in inputs]
    results: dict[int, torch.Tensor] = {}

    def work(index: int) -> None:
        results[index] = extractor(inputs[index])["us6"]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, want in enumerate(expected):
        assert torch.equal(results[index], want)


def test_errors_are_one_line_with_advice(dynamic_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(CleanDiftError, match="runs on the CPU"):
        FeatureExtractor.load(dynamic_onnx, backend="openvino", device="cuda")
    with pytest.raises(CleanDiftError, match="threads must be at least 1"):
        FeatureExtractor.load(dynamic_onnx, backend="openvino", threads=0)
    corrupt = tmp_path / "tiny.onnx"
    corrupt.write_bytes(b"not a graph")
    shutil.copy(dynamic_onnx.with_suffix(".json"), tmp_path / "tiny.json")
    with pytest.raises(CleanDiftError, match="is damaged"):
        FeatureExtractor.load(corrupt, backend="openvino")


def test_compare_runs_the_graph_in_openvino(
    dynamic_onnx: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cleandift_deploy.cli import main

    main(["compare", str(dynamic_onnx), "--runtime", "openvino"])
    out = capsys.readouterr().out
    assert "us6" in out and "NN match" in out
    assert "below threshold" not in out
