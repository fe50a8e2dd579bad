"""What `backend="auto"` picks, and that its bf16 choice keeps the fp16 artifact's agreement bar."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from runtime_helpers import TINY_TAPS, export_tiny, random_rgb

from cleandift_deploy.export.agreement import tap_agreement
from cleandift_deploy.manifest import InputInfo, Manifest, ShapeRange, TapInfo
from cleandift_deploy.models.loading import LoadedUNet
from cleandift_deploy.runtime import selection
from cleandift_deploy.runtime.extractor import FeatureExtractor


def _manifest(precision: str, source: str = "random-init:tiny") -> Manifest:
    return Manifest(
        kind="onnx",
        arch="tiny",
        source=source,
        checkpoint_sha256="random-init-seed1",
        taps=[TapInfo("us6", 64, 16)],
        input=InputInfo(),
        batch=ShapeRange(1, 1, 1),
        height=ShapeRange(64, 64, 64),
        width=ShapeRange(64, 64, 64),
        timestep=261.0,
        prompt="",
        prompt_input=False,
        precision=precision,
    )


@pytest.mark.parametrize(
    ("kind", "precision", "amx", "device", "source", "expected"),
    [
        ("engine", "fp16", True, None, "random-init:tiny", "tensorrt"),
        ("onnx", "fp32", True, None, "random-init:tiny", "onnxruntime"),
        ("onnx", "fp16", False, None, "random-init:tiny", "onnxruntime"),
        ("onnx", "fp16", True, None, "random-init:tiny", "torch-bf16"),
        ("onnx", "fp16", True, "cuda", "random-init:tiny", "onnxruntime"),
        ("onnx", "fp16", True, None, "/nowhere/unet.safetensors", "onnxruntime"),
    ],
)
def test_auto_choice(
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    precision: str,
    amx: bool,
    device: str | None,
    source: str,
    expected: str,
) -> None:
    monkeypatch.setattr(selection, "has_amx_bf16", lambda: amx)
    monkeypatch.setattr(selection, "ort_has_cuda", lambda: False)
    assert selection.choose_backend(kind, device, _manifest(precision, source)) == expected


def test_bf16_stand_in_meets_the_fp16_bar(
    tiny: LoadedUNet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(selection, "has_amx_bf16", lambda: True)
    path = export_tiny(tiny, tmp_path / "half.onnx", precision="fp16", batch=(1, 2, 2))
    auto = FeatureExtractor.load(path)
    assert auto.backend_name == "torch-cpu-bf16"
    fp32 = FeatureExtractor.load(path, backend="torch")
    rng = np.random.default_rng(torch.initial_seed())
    images = [random_rgb(64, 64, rng) for _ in range(2)]
    got, want = auto(images), fp32(images)
    for tap in TINY_TAPS:
        measured = tap_agreement(want[tap].numpy(), got[tap].numpy())
        assert not measured.failures("fp16"), (tap, measured)
        assert measured.failures("fp32"), "bf16 is not fp32-exact: the test would prove nothing"
