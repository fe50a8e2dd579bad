"""TensorRT backend: manifest checks and profile choice (no GPU needed), type-checking against
tensorrt-stubs, and a run against the PyTorch reference where a GPU and TensorRT exist."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from export_helpers import run_cli
from runtime_helpers import (
    TINY_TAPS,
    agreement,
    engine_manifest,
    export_tiny,
    random_rgb,
    repaired_tensorrt_stubs,
)

from cleandift_deploy.errors import CleanDiftError
from cleandift_deploy.manifest import Manifest, sidecar_path
from cleandift_deploy.models.loading import LoadedUNet
from cleandift_deploy.runtime.extractor import FeatureExtractor
from cleandift_deploy.runtime.tensorrt_backend import (
    ProfileShapes,
    check_compute_capability,
    check_tensorrt_version,
    select_profile,
    target_capabilities,
    tensorrt_installed,
)

BACKEND_MODULE = Path(__file__).parents[1] / "src/cleandift_deploy/runtime/tensorrt_backend.py"
MYPY_CONFIG = """\
[mypy]
python_version = 3.11
mypy_path = {stubs}
ignore_missing_imports = True
check_untyped_defs = True
warn_unused_ignores = True

[mypy-tensorrt.*,tensorrt_bindings.*]
ignore_errors = True

[mypy-diffusers.*,transformers.*,polygraphy.*,onnx_graphsurgeon.*,triton.*]
follow_imports = skip
"""


def test_tensorrt_version_must_match_the_build() -> None:
    manifest = engine_manifest()
    check_tensorrt_version(manifest, "10.13.0.36")
    with pytest.raises(CleanDiftError, match=r"built with TensorRT 10\.13\.0\.35, this machine"):
        check_tensorrt_version(manifest, "11.0.0.1")
    manifest.versions = {}
    with pytest.raises(CleanDiftError, match="does not say which TensorRT"):
        check_tensorrt_version(manifest, "10.13.0.35")
    rtx = engine_manifest(runtime="tensorrt-rtx")
    with pytest.raises(CleanDiftError, match="built for tensorrt-rtx"):
        check_tensorrt_version(rtx, "10.13.0.35")


def test_compute_capability_must_match_the_gpu() -> None:
    a100 = engine_manifest(compute_capabilities=["8.0"])
    assert target_capabilities(a100) == [(8, 0)]
    check_compute_capability(a100, (8, 0))
    with pytest.raises(
        CleanDiftError, match=r"built for compute capability 8\.0, this GPU is 9\.0"
    ):
        check_compute_capability(a100, (9, 0))
    several = engine_manifest(compute_capabilities=["SM86", "sm_89", "portable default"])
    assert target_capabilities(several) == [(8, 6), (8, 9)]
    with pytest.raises(CleanDiftError, match=r"8\.6, 8\.9"):
        check_compute_capability(several, (8, 0))


def test_profile_is_selected_by_shape() -> None:
    small: ProfileShapes = {"image": ((1, 3, 64, 64), (1, 3, 64, 64), (2, 3, 128, 128))}
    large: ProfileShapes = {"image": ((1, 3, 128, 128), (4, 3, 256, 256), (8, 3, 512, 512))}
    assert select_profile([small, large], {"image": (2, 3, 64, 128)}) == 0
    assert select_profile([small, large], {"image": (3, 3, 128, 128)}) == 1
    assert select_profile([small, large], {"image": (1, 3, 128, 128)}) == 0
    with pytest.raises(CleanDiftError, match="no optimisation profile"):
        select_profile([small, large], {"image": (9, 3, 128, 128)})
    with pytest.raises(CleanDiftError, match="no optimisation profile"):
        select_profile([small], {"image": (1, 3, 64)})


def _mypy(target: Path, stubs: Path, config: Path) -> subprocess.CompletedProcess[str]:
    config.write_text(MYPY_CONFIG.format(stubs=stubs))
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), str(target)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_backend_type_checks_against_tensorrt_stubs(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    site_packages = Path(sysconfig.get_paths()["purelib"])
    if not (site_packages / "tensorrt" / "__init__.pyi").is_file():
        pytest.fail("tensorrt-stubs is not installed: pip install --no-deps tensorrt-stubs")
    stubs = repaired_tensorrt_stubs(site_packages, tmp_path / "stubs")
    wrong = tmp_path / "wrong_call.py"
    wrong.write_text(
        "import tensorrt as trt\n"
        "runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))\n"
        "engine = runtime.deserialize_cuda_engine(b'')\n"
        "engine.create_execution_context().execute_async_v9(0)\n"
    )
    control = _mypy(wrong, stubs, tmp_path / "control.ini")
    assert "execute_async_v9" in control.stdout, "the stubs must be seen: " + control.stdout
    checked = _mypy(BACKEND_MODULE, stubs, tmp_path / "mypy.ini")
    assert checked.returncode == 0, checked.stdout + checked.stderr


needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or not tensorrt_installed(),
    reason="needs an NVIDIA GPU and TensorRT",
)


@needs_gpu
def test_tensorrt_matches_pytorch_on_the_gpu(tiny: LoadedUNet, tmp_path: Path) -> None:
    from cleandift_deploy.export.tensorrt_build import BuildOptions, build_engine

    onnx_path = export_tiny(tiny, tmp_path / "tiny.onnx", batch=(1, 2, 2))
    engine = tmp_path / "tiny-trt.engine"
    build_engine(onnx_path, engine, BuildOptions(target="tensorrt"))
    trt = FeatureExtractor.load(engine)
    reference = FeatureExtractor.load(onnx_path, backend="torch", device="cuda")
    rng = np.random.default_rng(torch.initial_seed())
    batches = [[random_rgb(64, 64, rng) for _ in range(n)] for n in (1, 2, 3, 2)]
    serial = [trt(images) for images in batches]
    with ThreadPoolExecutor(2) as pool:
        parallel = list(pool.map(trt, batches))
    for images, got, again in zip(batches, serial, parallel, strict=True):
        want = reference(images)
        for tap in TINY_TAPS:
            assert got[tap].is_cuda
            assert agreement(want[tap].cpu(), got[tap].cpu())["cosine_min"] >= 0.999
            assert torch.equal(got[tap], again[tap])


def _fake_engine(tmp_path: Path) -> Path:
    engine = tmp_path / "tiny.engine"
    engine.write_bytes(b"not a real engine")
    engine_manifest(compute_capabilities=["9.0"]).save(sidecar_path(engine))
    return engine


def test_cuda_graphs_option_reaches_the_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cleandift_deploy.runtime import tensorrt_backend

    seen: list[Any] = []

    def opened(path: Path, manifest: Manifest, device: str, **options: Any) -> None:
        seen.append(options)
        raise CleanDiftError("stopped after opening")

    monkeypatch.setattr(tensorrt_backend, "TensorRTBackend", opened)
    engine = _fake_engine(tmp_path)
    for graphs in (False, True):
        with pytest.raises(CleanDiftError, match="stopped after opening"):
            FeatureExtractor.load(engine, backend="tensorrt", device="cuda", cuda_graphs=graphs)
    image = tmp_path / "in.png"
    image.write_bytes(b"")
    args = ["extract", "--model", str(engine), str(image), "--out", str(tmp_path / "out")]
    assert run_cli([*args, "--backend", "tensorrt", "--device", "cuda", "--no-cuda-graphs"]) == 2
    assert "stopped after opening" in capsys.readouterr().err
    assert seen == [{"cuda_graphs": False}, {"cuda_graphs": True}, {"cuda_graphs": False}]


def _built_engine(tiny: LoadedUNet, tmp_path: Path) -> tuple[Path, Path]:
    from cleandift_deploy.export.tensorrt_build import BuildOptions, build_engine

    onnx_path = export_tiny(tiny, tmp_path / "tiny.onnx", batch=(1, 2, 2))
    engine = tmp_path / "tiny-trt.engine"
    build_engine(onnx_path, engine, BuildOptions(target="tensorrt"))
    return onnx_path, engine


@needs_gpu
def test_graphs_for_interleaved_shapes_equal_eager_runs(tiny: LoadedUNet, tmp_path: Path) -> None:
    _, engine = _built_engine(tiny, tmp_path)
    manifest = Manifest.load(sidecar_path(engine))
    assert manifest.target["build_gpu"]["compute_capability"] == "{}.{}".format(
        *torch.cuda.get_device_capability()
    )
    graphs = FeatureExtractor.load(engine)
    eager = FeatureExtractor.load(engine, cuda_graphs=False)
    rng = np.random.default_rng(torch.initial_seed())
    batches = [[random_rgb(64, 64, rng) for _ in range(n)] for n in (1, 2, 1, 2)]
    for images in batches:
        got, want = graphs(images), eager(images)
        for tap in TINY_TAPS:
            assert agreement(want[tap].cpu(), got[tap].cpu())["cosine_min"] >= 0.9999
            assert torch.allclose(got[tap], want[tap], atol=2e-2, rtol=1e-2)
    assert graphs.backend.cuda_graphs and not eager.backend.cuda_graphs  # type: ignore[attr-defined]
    pool = graphs.backend.pool  # type: ignore[attr-defined]
    assert sum(len(lane.slots) for lane in pool.lanes) == 2


@needs_gpu
def test_two_threads_capturing_at_once(tiny: LoadedUNet, tmp_path: Path) -> None:
    onnx_path, engine = _built_engine(tiny, tmp_path)
    trt = FeatureExtractor.load(engine)
    reference = FeatureExtractor.load(onnx_path, backend="torch", device="cuda")
    rng = np.random.default_rng(torch.initial_seed())
    batches = [[random_rgb(64, 64, rng) for _ in range(n)] for n in (1, 2)]
    start = threading.Barrier(2)

    def first_call(images: list[np.ndarray]) -> dict[str, torch.Tensor]:
        start.wait()
        return trt(images)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(first_call, batches))
    assert trt.backend.cuda_graphs  # type: ignore[attr-defined]
    for images, got in zip(batches, results, strict=True):
        want = reference(images)
        for tap in TINY_TAPS:
            assert agreement(want[tap].cpu(), got[tap].cpu())["cosine_min"] >= 0.999
