"""The `train` verb end to end on the tiny random model: outputs, resume, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_helpers import make_image_folder

from cleandift_deploy.cli import main
from cleandift_deploy.models import load_unet
from cleandift_deploy.train.state import read_state

pytestmark = pytest.mark.usefixtures("single_thread")


def _train(data: Path, out: Path, *extra: str) -> None:
    main(
        [
            "train",
            "--arch",
            "tiny",
            "--random-init",
            "--data",
            str(data),
            "--out",
            str(out),
            "--taps",
            "us6",
            "--batch-size",
            "2",
            "--lr",
            "1e-2",
            "--warmup",
            "0",
            *extra,
        ]
    )


def test_train_writes_student_state_and_curve_then_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_image_folder(tmp_path / "images", 4, seed=0, captions=True)
    out = tmp_path / "run"
    _train(data, out, "--steps", "2")
    err = capsys.readouterr().err
    assert "4 images" in err and "captions ignored" in err and "us6" in err
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    student = load_unet(out / "student" / "student_full.safetensors")
    assert student.arch == "tiny" and student.learned_timestep not in (None, 261.0)

    with pytest.raises(SystemExit) as refused:
        _train(data, out, "--steps", "3")
    assert refused.value.code == 2
    assert "pass --resume" in capsys.readouterr().err

    _train(data, out, "--steps", "3", "--resume")
    saved = read_state(out / "state.safetensors")
    assert saved.progress.step == 3 and saved.progress.history is not None
    assert saved.progress.history.shape == (3, 1)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--taps", "us99"], "unknown tap"),
        (["--image-size", "100"], "not a multiple of 64"),
        (["--batch-size", "0"], "batch-size must be at least 1"),
    ],
)
def test_bad_options_end_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    data = make_image_folder(tmp_path / "images", 1, seed=0)
    with pytest.raises(SystemExit) as failed:
        _train(data, tmp_path / "run", "--steps", "1", *args)
    err = capsys.readouterr().err
    assert failed.value.code == 2 and message in err
    assert err.startswith("error: ") and "Traceback" not in err


def test_empty_data_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "images").mkdir()
    with pytest.raises(SystemExit) as failed:
        _train(tmp_path / "images", tmp_path / "run", "--steps", "1")
    assert failed.value.code == 2
    assert "no usable images" in capsys.readouterr().err
