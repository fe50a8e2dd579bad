"""One spelling per concept: image sizes, outputs, the compare backend; defaults that no longer
contradict each other (warm-up vs steps, the build target)."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cleandift_deploy.cli import main
from cleandift_deploy.cli.options import join_image_sizes
from cleandift_deploy.cli.train import clamped_warmup
from cleandift_deploy.export.tensorrt_build import default_target
from cleandift_deploy.train import WARMUP_STEPS


class Captured(Exception):
    """Stops `export` once it has handed its options over."""


def _export(monkeypatch: pytest.MonkeyPatch, *args: str) -> Any:
    seen: dict[str, Any] = {}

    def capture(loaded: object, out: Path, options: object, spec: object = None) -> None:
        seen["out"], seen["options"] = out, options
        raise Captured

    loaded = SimpleNamespace(arch="tiny")
    monkeypatch.setattr("cleandift_deploy.models.loading.resolve_source", lambda *a, **k: loaded)
    monkeypatch.setattr("cleandift_deploy.export.exporter.export_onnx", capture)
    with pytest.raises(Captured):
        main(["export", "--arch", "tiny", "--random-init", *args])
    return seen


@pytest.mark.parametrize(
    "size", [["--image-size", "256x384"], ["--image-size", "256", "384"]], ids=["HxW", "H W"]
)
@pytest.mark.parametrize("output", ["-o", "--output", "--out"])
def test_image_size_and_output_spellings(
    size: list[str], output: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen = _export(monkeypatch, output, str(tmp_path / "x.onnx"), *size)
    assert seen["out"] == tmp_path / "x.onnx"
    assert seen["options"].image_size == (256, 384)


def test_square_size_and_legacy_pairs_only() -> None:
    assert join_image_sizes(["--image-size", "64", "--seed", "1"]) == [
        "--image-size", "64", "--seed", "1"
    ]  # fmt: skip
    assert join_image_sizes(["x", "--image-size", "64", "96"]) == ["x", "--image-size", "64x96"]


def test_warmup_is_clamped_to_the_steps(capsys: pytest.CaptureFixture[str]) -> None:
    assert clamped_warmup(None, 10 * WARMUP_STEPS) == WARMUP_STEPS
    assert clamped_warmup(3, 10) == 3
    assert capsys.readouterr().err == ""
    assert clamped_warmup(None, 1000) == 1000
    assert "warm-up 2000 steps clamped to --steps 1000" in capsys.readouterr().err


def test_build_target_follows_what_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", SimpleNamespace(Builder=object))
    assert default_target() == "tensorrt"
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails
    assert default_target() == "tensorrt-rtx"


def test_compare_takes_backend_as_well_as_runtime(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        main(["compare", "--help"])
    except SystemExit as done:
        assert done.code in (0, None)
    assert "--runtime, --backend" in capsys.readouterr().out


@pytest.mark.parametrize("taps", [["--taps", "us3,us6"], ["--taps", "us3", "--taps", "us6"]])
def test_taps_comma_separated_or_repeated(
    taps: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen = _export(monkeypatch, "-o", str(tmp_path / "x.onnx"), *taps)
    assert seen["options"].taps == ("us3", "us6")
