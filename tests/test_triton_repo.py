"""Triton model repositories: every config.pbtxt parses with Triton's own schema (tritonclient's
ModelConfig) and agrees with the artifact's manifest; the files sit where Triton looks for them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from export_helpers import run_cli, run_onnx
from runtime_helpers import export_tiny

from cleandift_deploy.errors import CleanDiftError
from cleandift_deploy.export.tensorrt_build import BuildOptions, build_engine
from cleandift_deploy.manifest import Manifest, sidecar_path
from cleandift_deploy.models.loading import LoadedUNet
from cleandift_deploy.serve.triton_config import RepoOptions, parse_config
from cleandift_deploy.serve.triton_repo import write_repository

DTYPES = {"uint8": "TYPE_UINT8", "float32": "TYPE_FP32"}


@pytest.fixture(scope="module")
def artifacts(tiny: LoadedUNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("artifacts")
    export_tiny(
        tiny,
        folder / "tiny.onnx",
        batch=(1, 2, 4),
        size_range=((64, 64), (128, 128)),
        image_size=(64, 128),
    )
    return folder


@pytest.fixture(scope="module")
def engine(artifacts: Path) -> Path:
    """A real TensorRT-RTX plan of the tiny graph (built without a GPU)."""
    out = artifacts / "tiny.engine"
    build_engine(
        artifacts / "tiny.onnx",
        out,
        BuildOptions(compute_capabilities=("8.6",), opt_level=0, workspace_gb=4.0),
    )
    return out


def _config(folder: Path):  # type: ignore[no-untyped-def]
    return parse_config((folder / "config.pbtxt").read_text())


def _check_against_manifest(config, manifest: Manifest) -> None:  # type: ignore[no-untyped-def]
    assert config.max_batch_size == manifest.batch.max
    (image,) = config.input
    assert image.name == manifest.input.name
    assert config.input[0].data_type == _enum(config, DTYPES[manifest.input.dtype])
    dynamic = manifest.height.min != manifest.height.max
    assert list(image.dims) == [3, -1, -1] if dynamic else [3, manifest.height.min]
    assert [o.name for o in config.output] == list(manifest.tap_names)
    for output, tap in zip(config.output, manifest.taps, strict=True):
        assert list(output.dims) == [tap.channels, -1, -1]
        assert output.data_type == _enum(config, "TYPE_FP32")
    (warmup,) = config.model_warmup
    shape = list(warmup.inputs["image"].dims)
    assert shape == [3, manifest.height.opt, manifest.width.opt]
    assert warmup.inputs["image"].random_data


def _enum(config, name: str) -> int:  # type: ignore[no-untyped-def]
    return (
        config.DESCRIPTOR.fields_by_name["input"]
        .message_type.fields_by_name["data_type"]
        .enum_type.values_by_name[name]
        .number
    )


def test_onnx_model_follows_triton_schema_and_manifest(artifacts: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    options = RepoOptions(preferred_batch=(2, 4), queue_delay_us=250, instances=2, kind="cpu")
    (folder,) = write_repository([artifacts / "tiny.onnx"], repo, options)
    manifest = Manifest.load(sidecar_path(artifacts / "tiny.onnx"))
    config = _config(folder)
    assert config.name == "tiny" and config.backend == "onnxruntime"
    _check_against_manifest(config, manifest)
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    assert config.dynamic_batching.max_queue_delay_microseconds == 250
    assert config.instance_group[0].count == 2
    assert config.instance_group[0].kind == config.instance_group[0].KIND_CPU
    assert (folder / "1" / "model.onnx").read_bytes() == (artifacts / "tiny.onnx").read_bytes()
    copied = json.loads((folder / "manifests" / "tiny.onnx.json").read_text())
    assert copied == json.loads(sidecar_path(artifacts / "tiny.onnx").read_text())
    assert [p.name for p in repo.iterdir()] == ["tiny"]


def test_external_weights_go_in_a_model_onnx_directory(artifacts: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.onnx"
    model = onnx.load(str(artifacts / "tiny.onnx"))
    onnx.save_model(
        model, str(big), save_as_external_data=True, location="big.onnx.data", size_threshold=1024
    )
    shutil.copy(sidecar_path(artifacts / "tiny.onnx"), sidecar_path(big))
    (folder,) = write_repository([big], tmp_path / "repo", RepoOptions())
    inner = folder / "1" / "model.onnx"
    assert sorted(p.name for p in inner.iterdir()) == ["big.onnx.data", "model.onnx"]
    image = np.random.default_rng(0).integers(0, 256, (1, 3, 64, 64), dtype=np.uint8)
    placed = run_onnx(inner / "model.onnx", {"image": image})
    original = run_onnx(artifacts / "tiny.onnx", {"image": image})
    for name, value in original.items():
        np.testing.assert_array_equal(placed[name], value)


def test_tensorrt_plans_per_compute_capability_with_cuda_graphs(
    artifacts: Path, engine: Path, tmp_path: Path
) -> None:
    other = tmp_path / "tiny-sm89.engine"
    shutil.copy(engine, other)
    manifest = Manifest.load(sidecar_path(engine))
    manifest.target = {**manifest.target, "compute_capabilities": ["8.9"]}
    manifest.save(sidecar_path(other))
    options = RepoOptions(preferred_batch=(1, 4), cuda_graphs=True)
    (folder,) = write_repository([engine, other], tmp_path / "repo", options)
    config = _config(folder)
    assert config.name == "tiny" and config.backend == "tensorrt"
    _check_against_manifest(config, Manifest.load(sidecar_path(engine)))
    assert dict(config.cc_model_filenames) == {"8.6": "model_sm86.plan", "8.9": "model_sm89.plan"}
    assert (folder / "1" / "model_sm86.plan").read_bytes() == engine.read_bytes()
    assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU
    assert config.optimization.cuda.graphs
    specs = config.optimization.cuda.graph_spec
    assert [s.batch_size for s in specs] == [1, 4]
    assert all(list(s.input["image"].dim) == [3, 64, 128] for s in specs)


def test_refusals(artifacts: Path, tmp_path: Path) -> None:
    onnx_path = artifacts / "tiny.onnx"
    with pytest.raises(CleanDiftError, match="tensorrt backend"):
        write_repository([onnx_path], tmp_path / "r", RepoOptions(cuda_graphs=True))
    with pytest.raises(CleanDiftError, match=r"within 1\.\.4"):
        write_repository([onnx_path], tmp_path / "r", RepoOptions(preferred_batch=(8,)))
    with pytest.raises(CleanDiftError, match="outside the model's batch range"):
        write_repository([onnx_path], tmp_path / "r", RepoOptions(max_batch=5))
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())
    write_repository([onnx_path], tmp_path / "r", RepoOptions())
    with pytest.raises(CleanDiftError, match="--force"):
        write_repository([onnx_path], tmp_path / "r", RepoOptions())
    write_repository([onnx_path], tmp_path / "r", RepoOptions(max_batch=2), force=True)
    assert _config(tmp_path / "r" / "tiny").max_batch_size == 2


def test_smallest_batch_above_one_is_refused(artifacts: Path, tmp_path: Path) -> None:
    copy = tmp_path / "b2.onnx"
    shutil.copy(artifacts / "tiny.onnx", copy)
    manifest = Manifest.load(sidecar_path(artifacts / "tiny.onnx"))
    manifest.batch.min = 2
    manifest.save(sidecar_path(copy))
    with pytest.raises(CleanDiftError, match="re-export with --batch 1"):
        write_repository([copy], tmp_path / "repo", RepoOptions())
    assert not any(p.name == "b2" for p in (tmp_path / "repo").glob("*"))


def test_cli_writes_a_repository_and_reports_errors_in_one_line(
    artifacts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    assert run_cli(["triton-repo", str(artifacts / "tiny.onnx"), "-o", str(repo)]) == 0
    _check_against_manifest(
        _config(repo / "tiny"), Manifest.load(sidecar_path(artifacts / "tiny.onnx"))
    )
    capsys.readouterr()
    assert run_cli(["triton-repo", str(tmp_path / "missing.onnx"), "-o", str(repo)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "export or build it first" in err
