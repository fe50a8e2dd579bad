"""Every mismatch between a request and an artifact ends in one clear CleanDiftError."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from runtime_helpers import export_tiny

from cleandift_deploy.errors import CleanDiftError
from cleandift_deploy.manifest import sidecar_path
from cleandift_deploy.models import random_unet
from cleandift_deploy.models.loading import LoadedUNet
from cleandift_deploy.runtime.extractor import FeatureExtractor


@pytest.fixture(scope="module")
def artifact(tiny: LoadedUNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A static 64 px, batch 1..2 export with taps us3 and us6."""
    return export_tiny(tiny, tmp_path_factory.mktemp("errors") / "tiny.onnx", batch=(1, 1, 2))


@pytest.fixture(scope="module")
def extractor(artifact: Path) -> FeatureExtractor:
    return FeatureExtractor.load(artifact)


def _copy(artifact: Path, folder: Path) -> Path:
    copy = folder / artifact.name
    shutil.copy(artifact, copy)
    shutil.copy(sidecar_path(artifact), sidecar_path(copy))
    return copy


def _edit_manifest(path: Path, **changes: object) -> None:
    data = json.loads(sidecar_path(path).read_text())
    data.update(changes)
    sidecar_path(path).write_text(json.dumps(data))


def test_size_outside_the_profile(artifact: Path) -> None:
    with pytest.raises(CleanDiftError, match=r"image size 128x128 is outside the model's range"):
        FeatureExtractor.load(artifact, image_size=(128, 128))


def test_size_not_a_multiple_of_64(artifact: Path) -> None:
    with pytest.raises(CleanDiftError, match="not a multiple of 64"):
        FeatureExtractor.load(artifact, image_size=(100, 64))


def test_taps_the_artifact_lacks(artifact: Path) -> None:
    with pytest.raises(CleanDiftError, match=r"no tap us9 \(it has us3, us6\)"):
        FeatureExtractor.load(artifact, taps=("us6", "us9"))
    with pytest.raises(CleanDiftError, match="unknown tap"):
        FeatureExtractor.load(artifact, taps=("us99",))


def test_a_subset_of_taps_is_served(artifact: Path) -> None:
    only = FeatureExtractor.load(artifact, taps=("us6",))
    assert tuple(only(np.zeros((64, 64, 3), np.uint8) + 7)) == ("us6",)


def test_manifest_of_another_format_version(artifact: Path, tmp_path: Path) -> None:
    copy = _copy(artifact, tmp_path)
    _edit_manifest(copy, format_version=99)
    with pytest.raises(CleanDiftError, match=r"manifest format 99.*re-export"):
        FeatureExtractor.load(copy)


def test_missing_or_corrupt_manifest(artifact: Path, tmp_path: Path) -> None:
    copy = _copy(artifact, tmp_path)
    sidecar_path(copy).write_text("{not json")
    with pytest.raises(CleanDiftError, match="not valid JSON"):
        FeatureExtractor.load(copy)
    sidecar_path(copy).unlink()  # the graph alone: the manifest in its metadata is used
    assert FeatureExtractor.load(copy).manifest == FeatureExtractor.load(artifact).manifest


def test_sidecar_of_another_model(artifact: Path, tmp_path: Path) -> None:
    copy = _copy(artifact, tmp_path)
    _edit_manifest(copy, checkpoint_sha256="0" * 64)
    with pytest.raises(CleanDiftError, match=r"describe different models.*checkpoint_sha256"):
        FeatureExtractor.load(copy)


def test_corrupt_graph(artifact: Path, tmp_path: Path) -> None:
    copy = _copy(artifact, tmp_path)
    copy.write_bytes(copy.read_bytes()[:5000])
    with pytest.raises(CleanDiftError, match=r"is damaged|cannot load"):
        FeatureExtractor.load(copy)


def test_wrong_files_and_backends(artifact: Path, tmp_path: Path) -> None:
    with pytest.raises(CleanDiftError, match="does not exist"):
        FeatureExtractor.load(tmp_path / "missing.onnx")
    text = tmp_path / "model.txt"
    text.write_text("x")
    with pytest.raises(CleanDiftError, match="not a model artifact"):
        FeatureExtractor.load(text)
    with pytest.raises(CleanDiftError, match="unknown backend"):
        FeatureExtractor.load(artifact, backend="magic")
    with pytest.raises(CleanDiftError, match="TensorRT runs built engines"):
        FeatureExtractor.load(artifact, backend="tensorrt")
    engine = tmp_path / "model.plan"
    shutil.copy(artifact, engine)
    shutil.copy(sidecar_path(artifact), sidecar_path(engine))
    with pytest.raises(CleanDiftError, match="describes a onnx artifact"):
        FeatureExtractor.load(engine)


def test_reference_from_another_checkpoint(artifact: Path) -> None:
    other = random_unet("tiny", seed=5)
    with pytest.raises(CleanDiftError, match="not the checkpoint the model was exported from"):
        FeatureExtractor.load(artifact, backend="torch", source=other)


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (torch.full((1, 3, 64, 64), float("nan")), "NaN or infinite"),
        (torch.rand(1, 3, 64, 64) * 255, r"must be scaled to \[-1, 1\]"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "must be float"),
        (torch.rand(2, 4, 64, 64) * 2 - 1, r"must be \[B,3,H,W\]"),
        (np.random.rand(64, 64, 3), "must be uint8"),
        (np.zeros((64, 64), np.uint8), "must be uint8"),
        ("cat.jpg", "unsupported image input"),
        ([], "no images given"),
    ],
)
def test_bad_images(extractor: FeatureExtractor, images: object, message: str) -> None:
    with pytest.raises(CleanDiftError, match=message):
        extractor(images)  # type: ignore[arg-type]


def test_prompt_given_to_a_baked_prompt_model(extractor: FeatureExtractor) -> None:
    with pytest.raises(CleanDiftError, match="bakes the prompt"):
        extractor(np.zeros((64, 64, 3), np.uint8), torch.randn(1, 77, 32))


def test_latent_model_refuses_images_and_needs_a_prompt(tiny: LoadedUNet, tmp_path: Path) -> None:
    path = export_tiny(tiny, tmp_path / "lat.onnx", vae=False, prompt_input=True)
    latent = FeatureExtractor.load(path)
    with pytest.raises(CleanDiftError, match="takes VAE latents"):
        latent(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(CleanDiftError, match="takes the prompt embedding as an input"):
        latent(torch.randn(1, 4, 8, 8))
    with pytest.raises(CleanDiftError, match="outside the model's range"):
        latent(torch.randn(1, 4, 16, 16), torch.randn(1, 77, 32))
    with pytest.raises(CleanDiftError, match=r"must be \[1 or 2, 77, D\]"):
        latent(torch.randn(2, 4, 8, 8), torch.randn(3, 77, 32))


class _NaNBackend:
    """A backend whose model overflowed: every output is NaN."""

    name = "nan"
    device = torch.device("cpu")

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        batch = next(iter(inputs.values())).shape[0]
        return {tap: torch.full((batch, 4, 2, 2), float("nan")) for tap in ("us3", "us6")}


def test_non_finite_features_are_refused(extractor: FeatureExtractor) -> None:
    broken = FeatureExtractor(_NaNBackend(), extractor.manifest)
    with pytest.raises(CleanDiftError, match="NaN or infinite values in us3"):
        broken(np.zeros((64, 64, 3), np.uint8))
