"""`create_session`: tuned options, the fused graph from the toolkit's own exporter, bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from ort_helpers import cosine, max_abs

from cleandift_deploy.errors import CleanDiftError
from cleandift_deploy.export import export_onnx
from cleandift_deploy.models.graph_module import build_export_graph
from cleandift_deploy.models.graph_options import ExportOptions
from cleandift_deploy.models.loading import LoadedUNet
from cleandift_deploy.runtime.ort_attention import count_fused, fuse_attention
from cleandift_deploy.runtime.ort_session import create_session, physical_cores, session_options

OPTIONS = ExportOptions(
    batch=(1, 2, 2),
    size_range=((64, 64), (128, 192)),
    image_size=(128, 128),
    check_agreement=False,
    external_data_threshold=0,
)


@pytest.fixture(scope="module")
def exported(tiny: LoadedUNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model exported by the toolkit (weights in an external file), once per module."""
    path = tmp_path_factory.mktemp("exported") / "tiny.onnx"
    export_onnx(tiny, path, OPTIONS)
    return path


def test_exported_graph_is_fused_and_agrees_with_torch(tiny: LoadedUNet, exported: Path) -> None:
    path = exported
    model = onnx.load(str(path), load_external_data=False)
    softmaxes = sum(node.op_type == "Softmax" for node in model.graph.node)
    assert fuse_attention(model) == softmaxes > 0 and count_fused(model) == softmaxes
    module = build_export_graph(tiny, OPTIONS).module.eval()
    image = torch.randint(0, 256, (2, 3, 128, 192), dtype=torch.uint8)
    with torch.no_grad():
        reference = module(image)[0].numpy()
    fast = create_session(path, threads=2).run(None, {"image": image.numpy()})[0]
    error = max_abs(fast, reference)
    assert cosine(fast, reference) >= 0.99999, cosine(fast, reference)
    assert error <= 1e-4 * float(np.abs(reference).max()), f"max abs {error}"


def test_options_use_every_physical_core_and_no_arena() -> None:
    options = session_options()
    assert options.intra_op_num_threads == physical_cores() >= 1
    assert not options.enable_cpu_mem_arena
    assert session_options(threads=3).intra_op_num_threads == 3


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CleanDiftError, match="does not exist: export the model first"):
        create_session(tmp_path / "absent.onnx")


def test_unreadable_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\xff\xff\xff\xff not a protobuf")
    with pytest.raises(CleanDiftError, match="is damaged"):
        create_session(path)


def test_bad_device_and_threads_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"")
    with pytest.raises(CleanDiftError, match="unknown device 'tpu'"):
        create_session(path, device="tpu")
    with pytest.raises(CleanDiftError, match="threads must be at least 1"):
        create_session(path, threads=0)


def test_truncated_weights_are_refused(exported: Path, tmp_path: Path) -> None:
    path = tmp_path / exported.name
    shutil.copy(exported, path)
    data = exported.with_name(exported.name + ".data").read_bytes()
    path.with_name(path.name + ".data").write_bytes(data[: len(data) // 2])
    with pytest.raises(CleanDiftError, match="cannot load"):
        create_session(path)


def test_session_creation_prints_no_optimiser_warnings(
    exported: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    capfd.readouterr()
    create_session(exported)
    assert session_options().log_severity_level == 3
    assert "Removing initializer" not in capfd.readouterr().err
