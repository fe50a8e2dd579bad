"""`extract --ray`: Ray Data actors write the same bytes as plain `extract`, resumably."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from export_helpers import run_cli
from PIL import Image
from runtime_helpers import export_tiny, random_rgb

from cleandift_deploy.models.loading import LoadedUNet


@pytest.fixture(scope="module")
def artifact(tiny: LoadedUNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny(tiny, tmp_path_factory.mktemp("ray") / "tiny.onnx", batch=(1, 2, 2))


@pytest.fixture(scope="module")
def ray_running() -> Iterator[None]:
    """One local Ray instance for the module (the CLI uses it and leaves it running)."""
    from cleandift_deploy.serve.ray_session import ray_session

    with ray_session(None, 2):
        yield


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Five readable images of several sizes (one in a subfolder) and one corrupt file."""
    rng = np.random.default_rng(7)
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for index, (height, width) in enumerate([(70, 90), (64, 64), (50, 40), (90, 33)]):
        Image.fromarray(random_rgb(height, width, rng)).save(folder / f"p{index}.png")
    Image.fromarray(random_rgb(40, 60, rng)).save(folder / "sub" / "q.jpg", quality=90)
    (folder / "p2b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*.safetensors")}


def test_ray_extract_equals_extract_byte_for_byte_and_resumes(
    artifact: Path,
    photos: Path,
    tmp_path: Path,
    ray_running: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    plain, distributed = tmp_path / "plain", tmp_path / "ray"
    base = ["extract", "--model", str(artifact), str(photos)]
    assert run_cli([*base, "--out", str(plain)]) == 1
    capsys.readouterr()
    assert run_cli([*base, "--out", str(distributed), "--ray", "--workers", "2"]) == 1
    err = capsys.readouterr().err
    assert "5 written, 0 skipped" in err and "1 unreadable" in err and "p2b.png" in err
    expected = _files(plain)
    assert len(expected) == 5 and _files(distributed) == expected

    (distributed / "p1.png.safetensors").unlink()
    assert run_cli([*base, "--out", str(distributed), "--ray"]) == 1
    err = capsys.readouterr().err
    assert "1 written, 4 skipped" in err and "1 unreadable" in err
    assert _files(distributed) == expected


def test_ray_options_need_ray(
    artifact: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["extract", "--model", str(artifact), str(photos), "--out", str(tmp_path / "o")]
    assert run_cli([*args, "--workers", "2"]) == 2
    assert "need --ray" in capsys.readouterr().err


def test_bad_request_ends_in_one_line_before_workers_start(
    artifact: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["extract", "--model", str(artifact), str(photos), "--out", str(tmp_path / "o")]
    assert run_cli([*args, "--ray", "--taps", "us9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "no tap us9" in err and len(err.splitlines()) == 1
