"""TensorRT-RTX ahead-of-time builds (no GPU needed) of exported graphs, and build errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from export_helpers import run_cli

from cleandift_deploy.errors import CleanDiftError
from cleandift_deploy.export import ExportOptions, export_onnx
from cleandift_deploy.export.tensorrt_build import BuildOptions, build_engine, profile_shapes
from cleandift_deploy.manifest import Manifest, sidecar_path
from cleandift_deploy.models import random_unet
from cleandift_deploy.models.loading import LoadedUNet


@pytest.fixture(scope="module", params=["fp32", "fp16"])
def exported(
    request: pytest.FixtureRequest, tiny: LoadedUNet, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp(request.param) / f"tiny-{request.param}.onnx"
    options = ExportOptions(
        batch=(1, 1, 2),
        size_range=((64, 64), (128, 128)),
        image_size=(64, 64),
        precision=request.param,
        check_agreement=False,
    )
    export_onnx(tiny, out, options)
    return out


def test_tiny_graph_builds_with_tensorrt_rtx(exported: Path) -> None:
    engine = exported.with_suffix(".engine")
    cache = exported.with_name("timing.cache")
    options = BuildOptions(
        compute_capabilities=("8.6",), opt_level=0, workspace_gb=4.0, timing_cache=cache
    )
    manifest = build_engine(exported, engine, options)
    assert not cache.exists()  # timing caches are no-ops under TensorRT-RTX: none is written
    assert manifest.build["opt_level"] == 0
    assert engine.stat().st_size > 1_000_000
    assert sidecar_path(engine).name == engine.name + ".json"
    assert Manifest.load(sidecar_path(engine)) == manifest
    assert Manifest.load(sidecar_path(exported)).kind == "onnx"
    assert manifest.kind == "engine" and manifest.target["runtime"] == "tensorrt-rtx"
    assert manifest.target["compute_capabilities"] == ["8.6"]
    assert "tensorrt_rtx" in manifest.versions
    assert sorted(p.name for p in exported.parent.iterdir() if p.name.startswith(".")) == []


def test_profiles_come_from_the_manifest(exported: Path) -> None:
    manifest = Manifest.load(sidecar_path(exported))
    shapes = profile_shapes(manifest, "image", (-1, 3, -1, -1))
    assert shapes == [(1, 3, 64, 64), (1, 3, 64, 64), (2, 3, 128, 128)]


def test_cli_build_errors(exported: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hopper = exported.with_name("hopper.engine")
    args = ["build", str(exported), "-o", str(hopper), "--compute-capability", "9.0"]
    assert run_cli(args) == 2
    assert "SM90 needs --target tensorrt" in capsys.readouterr().err
    assert not hopper.exists()


@pytest.mark.slow
def test_full_sd21_fp16_graph_builds(tmp_path: Path) -> None:
    """SD2.1 architecture, random weights, us6, batch 1-2, 512-768 px.

    Minutes; the fp16 export alone peaks near 13 GB.
    """
    loaded = random_unet("sd21", seed=0)
    out = tmp_path / "sd21-fp16.onnx"
    options = ExportOptions(
        batch=(1, 1, 2),
        size_range=((512, 512), (768, 768)),
        image_size=(512, 512),
        precision="fp16",
        check_agreement=False,
        random_init=True,
    )
    with torch.no_grad():
        export_onnx(loaded, out, options)
    manifest = build_engine(out, tmp_path / "sd21-fp16-rtx.engine", BuildOptions(workspace_gb=8))
    assert (tmp_path / "sd21-fp16-rtx.engine").stat().st_size > 1e9
    assert manifest.target["runtime"] == "tensorrt-rtx"


def test_unknown_target_is_refused() -> None:
    from cleandift_deploy.export.tensorrt_build import import_tensorrt

    with pytest.raises(CleanDiftError, match="unknown target"):
        import_tensorrt("tensorrt-llm")


def test_opset23_attention_with_small_heads_builds(tmp_path: Path) -> None:
    """ONNX Attention (opset 23) in fp32 with head size 4 has no dedicated kernel; it builds
    once the parser marks it decomposable."""
    import onnx
    import tensorrt_rtx as trt
    from onnx import TensorProto, helper

    from cleandift_deploy.export.tensorrt_build import parse_onnx

    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2, 16, 4]) for n in "qkv"]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph(
        [helper.make_node("Attention", ["q", "k", "v"], ["y"])], "attention", inputs, [output]
    )
    path = tmp_path / "attention.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]), str(path))
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network, _parser = parse_onnx(trt, builder, path, logger)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 30)
    assert builder.build_serialized_network(network, config) is not None
