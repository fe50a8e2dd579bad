"""TensorRT backend: manifest checks and profile choice (no GPU needed), type-checking against
tensorrt-stubs, and a run against the PyTorch reference where a GPU and TensorRT exist."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from runtime_helpers import TINY_TAPS, agreement, export_tiny, random_rgb, repaired_tensorrt_stubs

from cleandift_deploy.errors import CleanDiftError
from cleandift_deploy.manifest import InputInfo, Manifest, ShapeRange, TapInfo
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


def _engine_manifest(**target: object) -> Manifest:
    return Manifest(
        kind="engine",
        arch="tiny",
        source="random-init:tiny",
        checkpoint_sha256="random-init-seed1",
        taps=[TapInfo("us6", 64, 16)],
        input=InputInfo(),
        batch=ShapeRange(1, 1, 4),
        height=ShapeRange(64, 64, 128),
        width=ShapeRange(64, 64, 128),
        timestep=261.0,
        prompt="",
        prompt_input=False,
        precision="fp16",
        versions={"tensorrt": "10.13.0.35"},
        target={"runtime": "tensorrt", **target},
    )


def test_tensorrt_version_must_match_the_build() -> None:
    manifest = _engine_manifest()
    check_tensorrt_version(manifest, "10.13.0.36")
    with pytest.raises(CleanDiftError, match=r"built with TensorRT 10\.13\.0\.35, this machine"):
        check_tensorrt_version(manifest, "11.0.0.1")
    manifest.versions = {}
    with pytest.raises(CleanDiftError, match="does not say which TensorRT"):
        check_tensorrt_version(manifest, "10.13.0.35")
    rtx = _engine_manifest(runtime="tensorrt-rtx")
    with pytest.raises(CleanDiftError, match="built for tensorrt-rtx"):
        check_tensorrt_version(rtx, "10.13.0.35")


def test_compute_capability_must_match_the_gpu() -> None:
    a100 = _engine_manifest(compute_capabilities=["8.0"])
    assert target_capabilities(a100) == [(8, 0)]
    check_compute_capability(a100, (8, 0))
    with pytest.raises(
        CleanDiftError, match=r"built for compute capability 8\.0, this GPU is 9\.0"
    ):
        check_compute_capability(a100, (9, 0))
    several = _engine_manifest(compute_capabilities=["SM86", "sm_89", "portable default"])
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
