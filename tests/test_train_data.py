"""Training data and state files: folder scanning, resizing, sample order, safe checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from train_helpers import blob_image, make_image_folder, tiny_trainer

from cleandift_deploy.errors import CleanDiftError
from cleandift_deploy.train import state as state_module
from cleandift_deploy.train.data import ImageFolder, SampleOrder
from cleandift_deploy.train.state import read_state

pytestmark = pytest.mark.usefixtures("single_thread")


def test_empty_or_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(CleanDiftError, match="no usable images"):
        ImageFolder(tmp_path, 64)
    with pytest.raises(CleanDiftError, match="not a folder"):
        ImageFolder(tmp_path / "missing", 64)


def test_unreadable_files_and_bad_captions_are_skipped_and_counted(tmp_path: Path) -> None:
    make_image_folder(tmp_path, 3, seed=1, captions=True, suffix=".jpg")
    blob_image(np.random.default_rng(2)).save(tmp_path / "extra.webp")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really an image")
    blob_image(np.random.default_rng(3)).save(tmp_path / "badcaption.png")
    (tmp_path / "badcaption.json").write_text("{not json")
    (tmp_path / "readme.md").write_text("ignored")
    data = ImageFolder(tmp_path, 64)
    assert len(data) == 4
    assert sorted(p.name for p in data.skipped) == ["badcaption.png", "broken.png"]
    captions = {r.path.name: r.caption for r in data.records}
    assert captions["img001.jpg"] == "a photo number 1" and captions["extra.webp"] is None


def test_crop_keeps_the_centre_and_squash_keeps_everything(tmp_path: Path) -> None:
    pixels = np.zeros((64, 192, 3), dtype=np.uint8)
    pixels[:, :64] = (255, 0, 0)
    pixels[:, 64:128] = (0, 255, 0)
    pixels[:, 128:] = (0, 0, 255)
    Image.fromarray(pixels).save(tmp_path / "bands.png")
    cropped = ImageFolder(tmp_path, 64, "crop").load(0)
    squashed = ImageFolder(tmp_path, 64, "squash").load(0)
    assert cropped.shape == squashed.shape == (3, 64, 64)
    assert cropped.min() >= -1 and cropped.max() <= 1
    green = cropped[1, :, 8:56].mean()
    assert green > 0.95 and cropped[0].max() < -0.9
    assert squashed[0, :, :16].mean() > 0.9 and squashed[2, :, -16:].mean() > 0.9


def test_sample_order_is_a_permutation_per_epoch_and_stateless() -> None:
    order = SampleOrder(7, seed=4)
    stream = order.indices(0, 21)
    for epoch in range(3):
        assert sorted(stream[epoch * 7 : (epoch + 1) * 7]) == list(range(7))
    assert stream[:7] != stream[7:14]
    assert SampleOrder(7, seed=4).indices(9, 8) == stream[9:17]
    assert SampleOrder(7, seed=5).indices(0, 7) != stream[:7]


def test_a_crash_while_saving_keeps_the_last_good_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = make_image_folder(tmp_path / "images", 4, seed=0)
    trainer = tiny_trainer(data_dir, tmp_path / "run", steps=1)
    trainer.run()
    good = trainer.state_path.read_bytes()

    def crash(tensors: dict[str, torch.Tensor], path: str, metadata: dict[str, str]) -> None:
        Path(path).write_bytes(b"half a file")
        raise KeyboardInterrupt

    trainer.step()
    monkeypatch.setattr(state_module, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        trainer.save()
    assert trainer.state_path.read_bytes() == good
    assert read_state(trainer.state_path).progress.step == 1
    assert [p.name for p in trainer.out.iterdir() if ".tmp-" in p.name] == []


def test_corrupt_or_mismatched_state_refuses_to_resume(tmp_path: Path) -> None:
    data_dir = make_image_folder(tmp_path / "images", 4, seed=0)
    run = tmp_path / "run"
    tiny_trainer(data_dir, run, steps=1).run()
    with pytest.raises(CleanDiftError, match="taps was"):
        tiny_trainer(data_dir, run, resume=True, steps=2, taps=("us6",))
    with pytest.raises(CleanDiftError, match="seed was"):
        tiny_trainer(data_dir, run, resume=True, steps=2, seed=11)
    state = run / "state.safetensors"
    state.write_bytes(state.read_bytes()[:1000])
    with pytest.raises(CleanDiftError, match="cannot read the training state"):
        tiny_trainer(data_dir, run, resume=True, steps=2)
    with pytest.raises(CleanDiftError, match="no training state"):
        tiny_trainer(data_dir, tmp_path / "empty", resume=True, steps=2)


def test_caption_files_reach_the_records(tmp_path: Path) -> None:
    make_image_folder(tmp_path, 2, seed=0, captions=True)
    (tmp_path / "img000.json").write_text(json.dumps({"caption": "a red blob"}))
    data = ImageFolder(tmp_path, 64)
    assert [data.caption(i) for i in range(2)] == ["a red blob", "a photo number 1"]


def test_a_non_finite_loss_stops_with_a_clear_error(tmp_path: Path) -> None:
    data_dir = make_image_folder(tmp_path / "images", 4, seed=0)
    trainer = tiny_trainer(data_dir, tmp_path / "run", steps=1)
    trainer.run()
    before = [p.detach().clone() for p in trainer.distiller.trainable_parameters()]
    with torch.no_grad():
        trainer.distiller.teacher.conv_in.weight.fill_(float("nan"))
    with pytest.raises(CleanDiftError, match="not finite at step 2"):
        trainer.step()
    after = trainer.distiller.trainable_parameters()
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert read_state(trainer.state_path).progress.step == 1
