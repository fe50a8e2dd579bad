"""Bad input to `export` ends in one line and exit status 2, and leaves no files behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from export_helpers import run_cli
from safetensors.torch import save_file

from cleandift_deploy.models.loading import LoadedUNet

TINY = ["--arch", "tiny", "--random-init"]


def _expect_error(capsys: pytest.CaptureFixture[str], args: list[str], fragment: str) -> None:
    assert run_cli(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and fragment in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--taps", "us11"], "unknown tap 'us11'"),
        (["--image-size", "100", "96"], "not a multiple of 64"),
        (["--image-size", "192", "192", "--size-range", "64x64", "128x128"], "outside the size"),
        (["--batch", "4:2:1"], "MIN <= OPT <= MAX"),
        (["--batch", "two"], "is not MIN:OPT:MAX"),
        (["--calibration-images", "."], "only applies to --precision fp16"),
        (["--seed", "1"], "give either SOURCE or --random-init"),
    ],
)
def test_bad_options_are_one_line_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, extra: list[str], fragment: str
) -> None:
    out = tmp_path / "m.onnx"
    args = ["export", *TINY, "-o", str(out), *extra]
    if extra == ["--seed", "1"]:
        args = ["export", str(tmp_path), *TINY, "-o", str(out)]
    _expect_error(capsys, args, fragment)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    out.write_bytes(b"keep me")
    _expect_error(capsys, ["export", *TINY, "-o", str(out)], "pass --force")
    assert out.read_bytes() == b"keep me"


def test_checkpoint_architecture_mismatch(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny: LoadedUNet
) -> None:
    checkpoint = tmp_path / "student_unet.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.unet.state_dict().items()}, str(checkpoint))
    out = tmp_path / "m.onnx"
    assert run_cli(["export", str(checkpoint), "--arch", "sd15", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert "student_unet.safetensors" in err
    assert not out.exists()


def test_failed_export_leaves_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    images = tmp_path / "calib"
    images.mkdir()
    (images / "broken.png").write_bytes(b"not a png at all")
    out = tmp_path / "m.onnx"
    args = ["export", *TINY, "-o", str(out), "--precision", "fp16"]
    _expect_error(capsys, [*args, "--calibration-images", str(images)], "cannot read calibration")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib"]


def test_export_failing_after_writing_leaves_nothing(
    tiny: LoadedUNet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cleandift_deploy.errors import CleanDiftError
    from cleandift_deploy.export import ExportOptions, export_onnx, exporter

    def reject(path: Path) -> None:
        assert path.is_file()
        raise CleanDiftError("the exported graph is invalid: simulated")

    monkeypatch.setattr(exporter, "check_onnx", reject)
    with pytest.raises(CleanDiftError, match="simulated"):
        export_onnx(tiny, tmp_path / "m.onnx", ExportOptions(check_agreement=False))
    assert list(tmp_path.iterdir()) == []
