"""`cleandift-deploy --version` and `info`, and one-line errors without tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cleandift_deploy import __version__
from cleandift_deploy.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real console entry point in a subprocess, as a user runs it."""
    code = "from cleandift_deploy.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300
    )


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The CLI in-process: exit status, stdout and stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main([*args])
        sys.exit(0)
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def test_version_from_the_installed_entry_point() -> None:
    result = run_cli("--version")
    assert result.returncode == 0 and __version__ in result.stdout


def test_info_reports_the_full_sd21_unet_size(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "info", "--arch", "sd21", "--random-init")
    assert code == 0, err
    assert "865.9M (865,910,724)" in out
    rows = {cells[0]: cells[1:] for cells in _table_rows(out)}
    assert rows["us6"] == ["1280", "16", "1280x48x48"]
    assert rows["res3_2"] == ["320", "8", "320x96x96"]


def _table_rows(text: str) -> list[list[str]]:
    """The cells of each row of a rich table, stripped of padding."""
    return [
        [cell.strip() for cell in line.strip("│ ").split("│")]
        for line in text.splitlines()
        if line.startswith("│")
    ]


def test_info_on_a_saved_folder_at_a_given_size(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny
) -> None:
    tiny.unet.save_pretrained(tmp_path / "unet", safe_serialization=True)
    code, out, err = cli(capsys, "info", str(tmp_path), "--image-size", "128", "192")
    assert code == 0, err
    assert "architecture  tiny" in out
    assert "64x8x12" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("info", "/no/such/model"), "does not exist"),
        (("info", "--random-init"), "--random-init needs --arch"),
        (
            ("info", "--arch", "tiny", "--random-init", "--image-size", "100", "64"),
            "not a multiple of 64",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], message: str
) -> None:
    code, _, err = cli(capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_errors_leave_no_traceback_in_a_real_process() -> None:
    result = run_cli("info", "/no/such/model")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip() == "error: /no/such/model does not exist: " + (
        "give a model folder, a .safetensors file or a Hugging Face repo id "
        "(ORG/NAME[:FILE][@REVISION]) that is in the local cache"
    )
