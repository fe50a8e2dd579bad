"""`cleandift-deploy extract`: folders in, one safetensors file per image out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from export_helpers import run_cli
from PIL import Image
from runtime_helpers import TINY_TAPS, agreement, export_tiny, random_rgb
from safetensors import safe_open
from safetensors.torch import save_file

from cleandift_deploy.manifest import sidecar_path
from cleandift_deploy.models.loading import LoadedUNet
from cleandift_deploy.runtime.extractor import FeatureExtractor
from cleandift_deploy.runtime.images import read_image
from cleandift_deploy.runtime.tensorrt_backend import tensorrt_installed


@pytest.fixture(scope="module")
def artifact(tiny: LoadedUNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny(tiny, tmp_path_factory.mktemp("cli") / "tiny.onnx", batch=(1, 2, 2))


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Three readable images (one in a subfolder, one greyscale) and one corrupt file."""
    rng = np.random.default_rng(torch.initial_seed())
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(random_rgb(70, 90, rng)).save(folder / "a.png")
    Image.fromarray(random_rgb(64, 64, rng)).save(folder / "a.jpg", quality=95)
    Image.fromarray(random_rgb(50, 40, rng)[..., 0], mode="L").save(folder / "sub" / "b.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / "notes.txt").write_text("not an image, not picked up")
    return folder


def test_folder_with_a_corrupt_file(
    artifact: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "features"
    code = run_cli(["extract", "--model", str(artifact), str(photos), "--out", str(out), "--pca"])
    err = capsys.readouterr().err
    assert code == 1, "unreadable images make the run fail at the end"
    assert "3 written, 0 skipped" in err and "1 unreadable" in err and "broken.jpg" in err
    outputs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.safetensors"))
    assert outputs == ["a.jpg.safetensors", "a.png.safetensors", "sub/b.png.safetensors"]
    assert (out / "a.png.pca.png").is_file() and (out / "sub" / "b.png.pca.png").is_file()
    assert not list(out.rglob(".*tmp*")), "no temporary files are left behind"

    extractor = FeatureExtractor.load(artifact, backend="torch")
    with safe_open(str(out / "a.png.safetensors"), "pt") as stored:
        metadata = stored.metadata()
        assert sorted(stored.keys()) == sorted(TINY_TAPS)
        want = extractor([read_image(photos / "a.png")])
        for tap in TINY_TAPS:
            got = stored.get_tensor(tap)
            assert got.shape == want[tap].shape[1:]
            assert agreement(want[tap], got[None])["cosine_min"] >= 0.99999
    assert json.loads(metadata["image_size"]) == [70, 90]
    assert json.loads(metadata["input_size"]) == [64, 64]
    assert metadata["manifest_sha256"] == extractor.manifest_sha256
    assert metadata["backend"] == "onnxruntime-cpu"


def test_existing_outputs_are_skipped_unless_overwrite(
    artifact: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "features"
    image = str(photos / "a.png")
    assert run_cli(["extract", "--model", str(artifact), image, "--out", str(out)]) == 0
    first = (out / "a.png.safetensors").stat().st_mtime_ns
    capsys.readouterr()
    assert run_cli(["extract", "--model", str(artifact), image, "--out", str(out)]) == 0
    assert "0 written, 1 skipped" in capsys.readouterr().err
    assert (out / "a.png.safetensors").stat().st_mtime_ns == first
    args = ["extract", "--model", str(artifact), image, "--out", str(out), "--overwrite"]
    assert run_cli(args) == 0
    assert "1 written, 0 skipped" in capsys.readouterr().err


def test_taps_and_batch_size_options(artifact: Path, photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "features"
    args = ["extract", "--model", str(artifact), str(photos / "sub"), "--out", str(out)]
    assert run_cli([*args, "--taps", "us6", "--batch-size", "1"]) == 0
    with safe_open(str(out / "b.png.safetensors"), "pt") as stored:
        assert list(stored.keys()) == ["us6"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--taps", "us9"], "no tap us9"),
        (["--image-size", "100", "64"], "not a multiple of 64"),
        (["--image-size", "128", "128"], "outside the model's range"),
    ],
)
def test_bad_requests_end_in_one_line(
    artifact: Path,
    photos: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    args = ["extract", "--model", str(artifact), str(photos), "--out", str(tmp_path / "o"), *extra]
    assert run_cli(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
    assert "Traceback" not in err


def test_missing_inputs_and_models(
    artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "o")
    assert run_cli(["extract", "--model", str(artifact), str(tmp_path / "none"), "--out", out]) == 2
    assert "does not exist" in capsys.readouterr().err
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)  # an empty folder is refused first
    assert run_cli(["extract", "--model", str(tmp_path / "m.onnx"), str(image), "--out", out]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_bare_checkpoint_needs_its_vae(
    tiny: LoadedUNet, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = tmp_path / "student_unet.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.unet.state_dict().items()}, str(checkpoint))
    args = ["extract", "--model", str(checkpoint), str(photos), "--out", str(tmp_path / "o")]
    assert run_cli(args) == 2
    assert "no VAE found beside the UNet" in capsys.readouterr().err


def test_engines_need_tensorrt_and_a_gpu(
    artifact: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = tmp_path / "tiny.engine"
    engine.write_bytes(b"serialised engine")
    manifest = json.loads(artifact.with_suffix(".json").read_text())
    manifest.update(kind="engine", target={"runtime": "tensorrt"})
    sidecar_path(engine).write_text(json.dumps(manifest))
    args = ["extract", "--model", str(engine), str(photos), "--out", str(tmp_path / "o")]
    assert run_cli(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    if not tensorrt_installed():
        assert "TensorRT is not installed" in err
