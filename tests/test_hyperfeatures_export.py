"""The one-step hyperfeature graph: ONE ONNX graph (image -> UNet taps -> aggregation) that agrees
with PyTorch (fp32 min cosine >= 0.99999, fp16 mean >= 0.999), builds with TensorRT-RTX, and is
evaluated by `eval pck --method hyperfeatures --model` (and `--tap hyperfeatures`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from export_helpers import assert_fp16_agreement, assert_fp32_agreement, random_images, run_cli
from export_helpers import run_onnx as run_graph

from cleandift_deploy.errors import CleanDiftError
from cleandift_deploy.eval.photoset import make_synthetic
from cleandift_deploy.export.tensorrt_build import BuildOptions, build_engine
from cleandift_deploy.manifest import Manifest, sidecar_path
from cleandift_deploy.methods.hyperfeatures.aggregation import AggregationNetwork
from cleandift_deploy.methods.hyperfeatures.checkpoint import (
    AggregatorInfo,
    load_aggregator,
    save_aggregator,
)
from cleandift_deploy.methods.hyperfeatures.extract import layer_channels
from cleandift_deploy.methods.hyperfeatures.graph import OUTPUT, hyperfeature_spec
from cleandift_deploy.models.graph_options import ExportOptions
from cleandift_deploy.models.loading import LoadedUNet

pytestmark = pytest.mark.usefixtures("single_thread")


def _info(tiny: LoadedUNet, variant: str = "one-step") -> AggregatorInfo:
    timesteps = (-1.0,) if variant == "one-step" else (-1.0, 60.0)
    return AggregatorInfo(
        layer_channels(tiny.unet.config), timesteps, variant, 384, tiny.arch, tiny.source,
        tiny.checkpoint_sha256, "mean", 64, 7,
    )  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tiny: LoadedUNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An aggregation network with random (non-uniform) mixing weights for the tiny UNet."""
    torch.manual_seed(3)
    network = AggregationNetwork(layer_channels(tiny.unet.config), 1)
    with torch.no_grad():
        network.mixing_weights.normal_()
    path = tmp_path_factory.mktemp("hf") / "aggregator.safetensors"
    save_aggregator(path, network, _info(tiny))
    return path


@pytest.fixture(scope="module")
def artifacts(checkpoint: Path) -> dict[str, Path]:
    """fp32 (with the exporter's own agreement record) and fp16 exports, batch 1-2, 64-128 px."""
    found = {}
    for precision in ("fp32", "fp16"):
        out = checkpoint.parent / f"hf-{precision}.onnx"
        args = ["export-hyperfeatures", str(checkpoint), "-o", str(out), "--precision", precision]
        args += ["--batch", "1:2:2", "--size-range", "64x64", "128x128"]
        assert run_cli(args if precision == "fp32" else [*args, "--no-agreement"]) == 0
        found[precision] = out
    return found


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_one_graph_agrees_with_pytorch(
    artifacts: dict[str, Path], precision: str, checkpoint: Path, tiny
) -> None:
    exported = artifacts[precision]
    manifest = Manifest.load(sidecar_path(exported))
    assert [(t.name, t.channels, t.stride) for t in manifest.taps] == [(OUTPUT, 384, 8)]
    assert manifest.timestep == -1.0 and manifest.prompt == ""
    assert manifest.build["head"] == "hyperfeatures" and manifest.build["aggregator_step"] == 7
    if precision == "fp32":
        assert manifest.agreement["failures"] == []
        assert manifest.agreement["taps"][OUTPUT]["cosine_min"] >= 0.99999
    network, info = load_aggregator(checkpoint)
    options = ExportOptions(image_size=(64, 64), batch=(1, 2, 2))
    reference = hyperfeature_spec(tiny, network, info, options).module
    for height, width in ((64, 64), (128, 64)):
        images = random_images(2, height, width)
        with torch.no_grad():
            expected = reference(torch.from_numpy(images))[0].numpy()
        got = run_graph(exported, {"image": images})[OUTPUT]
        assert got.shape == (2, 384, height // 8, width // 8)
        if manifest.precision == "fp32":
            assert_fp32_agreement(expected, got)
        else:
            assert_fp16_agreement(expected, got)


@pytest.mark.slow  # 55-67 s per build on the shared 2-core machine under load
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_graph_builds_with_tensorrt_rtx(artifacts: dict[str, Path], precision: str) -> None:
    exported = artifacts[precision]
    engine = exported.with_suffix(".engine")
    options = BuildOptions(compute_capabilities=("8.6",), opt_level=0, workspace_gb=4.0)
    manifest = build_engine(exported, engine, options)
    assert manifest.kind == "engine" and manifest.tap_names == (OUTPUT,)
    assert engine.stat().st_size > 1_000_000


@pytest.mark.parametrize("method", [["--method", "hyperfeatures"], ["--tap", "hyperfeatures"]])
def test_eval_pck_runs_the_artifact(
    artifacts: dict[str, Path],
    tmp_path: Path,
    method: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    exported = artifacts["fp32"]
    data = tmp_path / "synthetic"
    make_synthetic(data, {"test": 2})
    out = tmp_path / "eval"
    args = ["eval", "pck", "--data", str(data), "--dataset", "spair", "--model", str(exported)]
    assert run_cli([*args, *method, "--out", str(out)]) == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["pairs"] == 2
    assert 0.0 <= results["pck"]["0.1"]["per_point"] <= 1.0


def test_multi_step_and_foreign_unet_are_refused(tiny, tmp_path: Path) -> None:
    network = AggregationNetwork(layer_channels(tiny.unet.config), 2)
    with pytest.raises(CleanDiftError, match="only the one-step variant exports"):
        hyperfeature_spec(tiny, network, _info(tiny, "multi-step"), ExportOptions())
    other = AggregatorInfo(**{**_info(tiny).__dict__, "checkpoint_sha256": "0" * 64})
    with pytest.raises(CleanDiftError, match="trained on UNet 000000000000"):
        hyperfeature_spec(tiny, AggregationNetwork(other.channels, 1), other, ExportOptions())


def test_torch_backend_on_the_artifact_points_to_the_checkpoint(artifacts: dict[str, Path]) -> None:
    from cleandift_deploy.eval.protocol import MethodOptions
    from cleandift_deploy.methods.registry import build_method

    options = MethodOptions(model=artifacts["fp32"], backend="torch")
    with pytest.raises(CleanDiftError, match="give --checkpoint"):
        build_method("hyperfeatures", options)
