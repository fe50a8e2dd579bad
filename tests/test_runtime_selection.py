"""What `backend="auto"` picks, and how the reduced-precision paths agree with fp32 PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from runtime_helpers import TINY_TAPS, export_tiny, random_rgb

from cleandift_deploy.export.agreement import tap_agreement
from cleandift_deploy.models.loading import LoadedUNet
from cleandift_deploy.runtime.extractor import FeatureExtractor
from cleandift_deploy.runtime.selection import choose_backend


@pytest.fixture(scope="module")
def half(tiny: LoadedUNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model exported in mixed fp16."""
    out = tmp_path_factory.mktemp("half") / "half.onnx"
    return export_tiny(tiny, out, precision="fp16", batch=(1, 2, 2))


def _pair() -> list[np.ndarray]:
    rng = np.random.default_rng(torch.initial_seed())
    return [random_rgb(64, 64, rng) for _ in range(2)]


def test_auto_choice() -> None:
    assert choose_backend("engine") == "tensorrt"
    assert choose_backend("onnx") == "onnxruntime"


def test_auto_runs_an_fp16_graph_in_onnxruntime_within_the_fp16_bar(half: Path) -> None:
    auto = FeatureExtractor.load(half)
    assert auto.backend_name == "onnxruntime-cpu"
    fp32 = FeatureExtractor.load(half, backend="torch")
    images = _pair()
    got, want = auto(images), fp32(images)
    for tap in TINY_TAPS:
        measured = tap_agreement(want[tap].numpy(), got[tap].numpy())
        assert not measured.failures("fp16"), (tap, measured)


def test_torch_bf16_by_name(half: Path) -> None:
    bf16 = FeatureExtractor.load(half, backend="torch-bf16")
    assert bf16.backend_name == "torch-cpu-bf16"
    fp32 = FeatureExtractor.load(half, backend="torch")
    images = _pair()
    got, want = bf16(images), fp32(images)
    for tap in TINY_TAPS:
        measured = tap_agreement(want[tap].numpy(), got[tap].numpy())
        assert measured.cosine_mean >= 0.999, (tap, measured)
        assert measured.failures("fp32"), "bf16 is not fp32-exact: the test would prove nothing"
