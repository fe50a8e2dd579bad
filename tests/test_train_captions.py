"""Captions through the pipeline's own text encoder, and a training run from a pipeline folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from train_helpers import make_image_folder, make_tiny_pipeline

from cleandift_deploy.cli import main
from cleandift_deploy.errors import CleanDiftError
from cleandift_deploy.models import encode_prompt, load_unet
from cleandift_deploy.train.conditioning import Conditioning

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_pipeline(tmp_path_factory.mktemp("pipeline"))


def test_captions_are_embedded_by_the_text_encoder(pipeline: Path) -> None:
    conditioning = Conditioning(pipeline, "tiny", prompt="a photo")
    batch = conditioning(["a red blob", None, "a blue blob"])
    assert batch.shape == (3, 77, 32)
    for row, text in zip(batch, ["a red blob", "a photo", "a blue blob"], strict=True):
        alone = encode_prompt(pipeline, text)[0]
        assert float((row - alone).abs().max()) < 1e-5
    assert float((batch[0] - batch[2]).abs().max()) > 1e-2
    fixed = conditioning([None, None])
    assert fixed.shape == (1, 77, 32) and torch.equal(fixed[0], batch[1])
    ignoring = Conditioning(pipeline, "tiny", prompt="a photo", use_captions=False)
    assert torch.equal(ignoring(["a red blob"]), fixed)


def test_conditioning_without_a_text_encoder_needs_random_init(tmp_path: Path) -> None:
    with pytest.raises(CleanDiftError, match="no text_encoder"):
        Conditioning(tmp_path, "tiny")


def test_train_from_a_pipeline_folder_uses_its_vae_and_captions(
    pipeline: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_image_folder(tmp_path / "images", 2, seed=0, captions=True)
    out = tmp_path / "run"
    options = ["--steps", "1", "--taps", "us6", "--batch-size", "2", "--warmup", "0"]
    main(["train", "--teacher", str(pipeline), "--data", str(data), "--out", str(out), *options])
    err = capsys.readouterr().err
    assert "2 images" in err and "captions ignored" not in err
    student = load_unet(out / "student" / "student_full.safetensors")
    teacher = load_unet(pipeline)
    assert student.arch == teacher.arch == "tiny"
    changed = [
        name
        for name, value in student.unet.state_dict().items()
        if not torch.equal(value, teacher.unet.state_dict()[name])
    ]
    assert changed
