"""Model sources by Hugging Face repo id, offline: a hub cache built in a temporary HF_HOME (blobs,
snapshots, refs, a second revision) holding a tiny diffusers pipeline, a CleanDIFT `*_full` file
and a tiny DINOv2 saved by transformers' `save_pretrained`, under the real repo ids."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from export_helpers import run_cli, run_onnx
from hub_helpers import cache_repo, commit_of
from model_helpers import tiny_text_pipeline
from safetensors.torch import save_file

from cleandift_deploy.errors import CleanDiftError
from cleandift_deploy.manifest import Manifest, sidecar_path
from cleandift_deploy.models.dinov2 import (
    DINO_ARCHS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_backbone,
    load_dino,
)
from cleandift_deploy.models.loading import FULL_PREFIX, LoadedUNet, load_unet, load_vae
from cleandift_deploy.models.sources import parse_hub_ref, resolve_source_files
from cleandift_deploy.runtime.extractor import FeatureExtractor

pytestmark = pytest.mark.usefixtures("single_thread")

SD = "stabilityai/stable-diffusion-2-1"
CLEANDIFT = "CompVis/cleandift"
FULL = "cleandift_tiny_full.safetensors"
DINO = "facebook/dinov2-base"
MAIN, SECOND = commit_of("main"), commit_of("second")


def _dino(seed: int) -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build_backbone(DINO_ARCHS["dinov2_tiny"].config()).eval()


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, tiny: LoadedUNet) -> Path:
    """HF_HOME with the three repos; DINOv2 and CleanDIFT also hold a second revision."""
    work = tmp_path_factory.mktemp("hub")
    cache = work / "home" / "hub"
    pipeline = work / "pipeline"
    tiny.unet.save_pretrained(pipeline / "unet", safe_serialization=True)
    load_vae(None, "tiny", random_init=True).save_pretrained(pipeline / "vae")
    tiny_text_pipeline(pipeline)
    (pipeline / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    cache_repo(cache, SD, pipeline, MAIN)
    for label, commit, shift in (("main", MAIN, 1.0), ("v2", SECOND, 2.0)):
        full = work / label / FULL
        full.parent.mkdir()
        student = {FULL_PREFIX + k: v + shift for k, v in tiny.unet.state_dict().items()}
        save_file({**student, "timestep": torch.tensor(100.0 * shift)}, str(full))
        cache_repo(cache, CLEANDIFT, full, commit, refs=(label,))
        _dino(int(shift)).save_pretrained(work / f"dino-{label}")
        cache_repo(cache, DINO, work / f"dino-{label}", commit, refs=(label,))
    return work / "home"


@pytest.fixture(autouse=True)
def _hf_home(hub: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(hub))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_the_grammar_of_repo_ids() -> None:
    assert parse_hub_ref(f"{CLEANDIFT}:{FULL}@v2") == parse_hub_ref(f"{CLEANDIFT}@v2:{FULL}")
    ref = parse_hub_ref(f"{SD}:unet@{MAIN}")
    assert ref is not None and (ref.repo_id, ref.filename, ref.revision) == (SD, "unet", MAIN)
    for path_like in ("./a/b", "/a/b", "out/model.safetensors", "a/b.pth", "a--b/c", "noslash"):
        assert parse_hub_ref(path_like) is None, path_like


def test_pipeline_by_repo_id_exports_and_records_its_commit(
    tmp_path: Path, tiny: LoadedUNet
) -> None:
    resolved = resolve_source_files(SD)
    assert (resolved.layout, resolved.revision) == ("diffusers-pipeline", MAIN)
    out = tmp_path / "sd.onnx"
    args = ["export", SD, "--taps", "us6", "--image-size", "64", "64", "--no-agreement"]
    assert run_cli([*args, "-o", str(out)]) == 0
    manifest = Manifest.load(sidecar_path(out))
    assert manifest.source == f"{SD}@{MAIN}"
    assert manifest.origin == {"hub_repo": SD, "revision": MAIN}
    assert manifest.checkpoint_sha256 == resolved.sha256
    # --backend torch finds the weights again through the pinned repo id, even after main moves
    assert resolved.cache_dir is not None
    ref = resolved.cache_dir / f"models--{SD.replace('/', '--')}" / "refs" / "main"
    ref.write_text(SECOND)
    try:
        image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        by_torch = FeatureExtractor.load(out, backend="torch")([image])["us6"]
        by_onnx = FeatureExtractor.load(out, backend="onnxruntime")([image])["us6"]
        torch.testing.assert_close(by_torch, by_onnx, rtol=1e-4, atol=1e-4)
    finally:
        ref.write_text(MAIN)


@pytest.mark.parametrize(
    ("source", "shift"),
    [(f"{CLEANDIFT}:{FULL}", 1.0), (CLEANDIFT, 1.0), (f"{CLEANDIFT}@v2", 2.0)],
)
def test_cleandift_full_file_by_repo_id_and_revision(
    source: str, shift: float, tiny: LoadedUNet
) -> None:
    loaded = load_unet(source)
    assert loaded.learned_timestep == pytest.approx(100.0 * shift)
    key = "conv_in.weight"
    torch.testing.assert_close(loaded.unet.state_dict()[key], tiny.unet.state_dict()[key] + shift)
    commit = MAIN if shift == 1.0 else SECOND
    assert loaded.source == f"{CLEANDIFT}:{FULL}@{commit}"
    assert loaded.origin["revision"] == commit


def test_cleandift_full_file_exports(tmp_path: Path) -> None:
    out = tmp_path / "full.onnx"
    args = [
        "export",
        f"{CLEANDIFT}:{FULL}@{SECOND[:8]}",
        "--no-vae",
        "--prompt-input",
        "--taps",
        "us6",
    ]
    assert run_cli([*args, "--image-size", "64", "64", "-o", str(out)]) == 0
    manifest = Manifest.load(sidecar_path(out))
    assert manifest.timestep == pytest.approx(200.0)
    assert manifest.origin == {
        "hub_repo": CLEANDIFT,
        "revision": SECOND,
        "file": FULL,
        "requested_revision": SECOND[:8],
    }


def _normalised(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


@torch.no_grad()
def _pre_norm_output(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """transformers' own forward: the last block's output before the final LayerNorm."""
    return model(_normalised(images), output_hidden_states=True).hidden_states[-1]


def _no_network(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("a model source tried to reach the network")


def test_dinov2_by_repo_id_exports_equal_to_transformers_forward(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")  # no reliance on it: any connection attempt fails
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    monkeypatch.setattr(socket, "create_connection", _no_network)
    out = tmp_path / "dino.onnx"
    assert (
        run_cli(
            [
                "export-dinov2",
                DINO,
                "-o",
                str(out),
                "--size-range",
                "42x42",
                "84x126",
                "--batch",
                "1:1:2",
            ]
        )
        == 0
    )
    manifest = Manifest.load(sidecar_path(out))
    assert manifest.source == f"{DINO}@{MAIN}" and manifest.arch == "dinov2_tiny"
    assert manifest.origin == {"hub_repo": DINO, "revision": MAIN}
    images = torch.randint(0, 256, (2, 3, 84, 126), dtype=torch.uint8)
    found = run_onnx(out, {"image": images.numpy()})["dino"]
    tokens = _pre_norm_output(_dino(1), images)[:, 1:]
    expected = tokens.transpose(1, 2).reshape(2, 32, 6, 9).numpy()
    np.testing.assert_allclose(found, expected, rtol=0, atol=2e-5)


def test_second_revision_and_a_local_save_pretrained_folder(tmp_path: Path) -> None:
    second = load_dino(f"{DINO}@v2")
    assert second.source == f"{DINO}@{SECOND}"
    local = tmp_path / "dino"
    _dino(2).save_pretrained(local)
    here = load_dino(local)
    assert here.checkpoint_sha256 == second.checkpoint_sha256 and here.origin == {}
    images = torch.randint(0, 256, (1, 3, 56, 56), dtype=torch.uint8)
    expected = _pre_norm_output(_dino(2), images)
    for loaded in (second, here):
        assert torch.equal(_pre_norm_output(loaded.model, images), expected)


def _one_line_error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    assert run_cli(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_missing_repo_and_revision_are_one_line_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, hub: Path
) -> None:
    out = str(tmp_path / "x.onnx")
    err = _one_line_error(capsys, ["export-dinov2", "facebook/dinov2-large", "-o", out])
    assert "facebook/dinov2-large is not in the Hugging Face cache" in err
    assert str(hub / "hub") in err and "`hf download facebook/dinov2-large`" in err
    err = _one_line_error(capsys, ["export", f"{CLEANDIFT}:{FULL}@v9", "-o", out])
    assert f"revision v9 of {CLEANDIFT} is not in the Hugging Face cache {hub / 'hub'}" in err
    assert f"`hf download {CLEANDIFT} {FULL} --revision v9`" in err and "refs main" in err
    err = _one_line_error(capsys, ["export", f"{CLEANDIFT}:other.safetensors", "-o", out])
    assert "other.safetensors is not in the cached snapshot" in err
    assert not (tmp_path / "x.onnx").exists()


def test_hf_hub_cache_wins_over_hf_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, hub: Path
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    with pytest.raises(CleanDiftError, match=f"cache {tmp_path / 'elsewhere'}"):
        resolve_source_files(DINO)
    shutil.copytree(hub / "hub", tmp_path / "elsewhere")
    assert resolve_source_files(DINO).cache_dir == tmp_path / "elsewhere"


def test_info_says_what_a_repo_id_resolved_to(capsys: pytest.CaptureFixture[str]) -> None:
    resolved = resolve_source_files(f"{CLEANDIFT}@v2")
    assert run_cli(["info", f"{CLEANDIFT}@v2", "--image-size", "64", "64"]) == 0
    out = capsys.readouterr().out
    assert f"hub repo      {CLEANDIFT} @ {SECOND} (v2)" in out
    assert f"sha256        {resolved.sha256}" in out
    assert "layout        cleandift-full" in out and f"weights       {FULL}" in out
    assert "architecture  tiny (unet)" in out and "timestep      200 (learned)" in out
    assert run_cli(["info", DINO]) == 0
    out = capsys.readouterr().out
    assert "layout        transformers-dinov2" in out and "architecture  dinov2_tiny" in out
    assert "tap           dino: 32 channels, stride 14, 32x6x6 at 84x84 px" in out
    assert "UNet params" not in out  # nothing was loaded
