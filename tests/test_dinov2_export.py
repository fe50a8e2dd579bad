"""DINOv2 artifacts: ONNX vs PyTorch (fp32 and fp16 thresholds) at sizes other than the traced
one, FeatureExtractor on both backends with letterboxing, `compare`, the CLI, and a TensorRT-RTX
ahead-of-time build."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from export_helpers import assert_fp16_agreement, assert_fp32_agreement, run_cli, run_onnx

from cleandift_deploy.errors import CleanDiftError
from cleandift_deploy.export.compare import compare_artifact
from cleandift_deploy.export.dinov2_export import DinoExportOptions, export_dinov2
from cleandift_deploy.export.tensorrt_build import BuildOptions, build_engine
from cleandift_deploy.manifest import Manifest, sidecar_path
from cleandift_deploy.models.dinov2 import DinoFeatures, random_dino
from cleandift_deploy.runtime.extractor import FeatureExtractor

SEED = 3


@pytest.fixture(scope="module", params=["fp32", "fp16"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp(request.param) / f"dino-{request.param}.onnx"
    options = DinoExportOptions(
        image_size=(84, 84),
        size_range=((42, 42), (126, 168)),
        batch=(1, 1, 2),
        precision=request.param,
    )
    export_dinov2(random_dino("dinov2_tiny", SEED), out, options)
    return out


def _assert_recorded_agreement(precision: str, figures: dict[str, float]) -> None:
    """fp32: every threshold. fp16: cosine and finiteness; nearest-neighbour agreement on the
    36 query cells of a random-weight 6x6 map flips on near ties, so it gets a looser bound."""
    assert figures["nonfinite"] == 0
    if precision == "fp32":
        assert figures["cosine_min"] >= 0.99999 and figures["relative_l2"] <= 1e-4
        assert figures["match_agreement"] == 1.0
    else:
        assert figures["cosine_mean"] >= 0.999 and figures["match_agreement"] >= 0.9


def test_onnx_matches_pytorch_at_other_sizes(exported: Path) -> None:
    module = DinoFeatures(random_dino("dinov2_tiny", SEED)).eval()
    manifest = Manifest.load(sidecar_path(exported))
    _assert_recorded_agreement(manifest.precision, manifest.agreement["taps"]["dino"])
    for height, width in ((126, 168), (42, 70)):
        images = torch.randint(0, 256, (2, 3, height, width), dtype=torch.uint8)
        with torch.no_grad():
            (reference,) = module(images)
        found = run_onnx(exported, {"image": images.numpy()})["dino"]
        assert found.shape == (2, 32, height // 14, width // 14)
        flat_ref = reference.numpy().transpose(0, 2, 3, 1).reshape(-1, 32)
        flat = found.transpose(0, 2, 3, 1).reshape(-1, 32)
        if manifest.precision == "fp32":
            assert_fp32_agreement(flat_ref, flat)
        else:
            assert_fp16_agreement(flat_ref, flat)


def test_manifest_describes_the_dino_contract(exported: Path) -> None:
    manifest = Manifest.load(sidecar_path(exported))
    assert manifest.arch == "dinov2_tiny"
    assert [(t.name, t.channels, t.stride) for t in manifest.taps] == [("dino", 32, 14)]
    assert manifest.input.resize == "letterbox" and manifest.input.multiple == 14
    assert manifest.build["layer"] == 1 and manifest.build["backbone"] == "dinov2"
    assert (manifest.height.min, manifest.height.max, manifest.width.max) == (42, 126, 168)


def test_extractor_backends_agree_with_letterboxing(exported: Path) -> None:
    images = [
        np.random.default_rng(SEED).integers(0, 256, (50, 90, 3), dtype=np.uint8),
        torch.randint(0, 256, (120, 60, 3), dtype=torch.uint8).numpy(),
    ]
    onnx = FeatureExtractor.load(exported, taps=["dino"])
    torch_ref = FeatureExtractor.load(exported, backend="torch")
    found, reference = onnx.extract(images), torch_ref.extract(images)
    assert onnx.resize == "letterbox" and onnx.image_size == (84, 84)
    assert found.placements[0].offset == (18, 0) and found.placements[0].content == (47, 84)
    assert found.placements[1].offset == (0, 21) and found.placements[1].content == (84, 42)
    flat = found.taps["dino"].permute(0, 2, 3, 1).reshape(-1, 32).numpy()
    flat_ref = reference.taps["dino"].permute(0, 2, 3, 1).reshape(-1, 32).numpy()
    if onnx.manifest.precision == "fp32":
        assert_fp32_agreement(flat_ref, flat)
    else:
        assert_fp16_agreement(flat_ref, flat)
    with pytest.raises(CleanDiftError, match="multiple of 14"):
        FeatureExtractor.load(exported, image_size=(64, 64))
    with pytest.raises(CleanDiftError, match="no tap us6"):
        FeatureExtractor.load(exported, taps=["us6"])


def test_compare_passes_its_thresholds(exported: Path) -> None:
    result = compare_artifact(exported)
    _assert_recorded_agreement(result.precision, vars(result.agreement["dino"]))
    if result.precision == "fp32":
        assert result.failures == []


def test_tensorrt_rtx_builds_the_dino_graph(exported: Path) -> None:
    engine = exported.with_suffix(".engine")
    options = BuildOptions(compute_capabilities=("8.6",), opt_level=0, workspace_gb=4.0)
    manifest = build_engine(exported, engine, options)
    assert engine.stat().st_size > 100_000
    assert manifest.kind == "engine" and manifest.arch == "dinov2_tiny"
    assert manifest.input.multiple == 14


def test_cli_export_dinov2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.onnx"
    args = ["export-dinov2", "--arch", "dinov2_tiny", "--random-init", "-o", str(out)]
    assert run_cli([*args, "--image-size", "56", "70", "--layer", "0"]) == 0
    manifest = Manifest.load(sidecar_path(out))
    assert (manifest.height.opt, manifest.width.opt, manifest.build["layer"]) == (56, 70, 0)
    assert manifest.agreement["failures"] == []
    assert run_cli([*args, "--image-size", "56", "64", "--force"]) == 2
    assert "not a multiple of 14" in capsys.readouterr().err
    registers = ["export-dinov2", "--arch", "dinov2_tiny_reg", "--random-init", "-o", str(out)]
    assert run_cli([*registers, "--force"]) == 2
    assert "antialiased bicubic" in capsys.readouterr().err
