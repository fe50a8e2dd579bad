"""Safe image decoding: EXIF orientation, modes to 8-bit RGB, bombs and corrupt files refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cleandift_deploy.errors import CleanDiftError
from cleandift_deploy.runtime.images import pil_to_rgb, read_image

EXIF_ORIENTATION = 0x0112
ROTATE_90_CW = 6


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(torch.initial_seed())


def test_exif_orientation_is_applied(tmp_path: Path, rng: np.random.Generator) -> None:
    pixels = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[EXIF_ORIENTATION] = ROTATE_90_CW
    path = tmp_path / "phone.png"
    image.save(path, exif=exif)
    decoded = read_image(path)
    assert decoded.shape == (30, 20, 3)
    assert np.array_equal(decoded, np.rot90(pixels, k=-1))


def test_greyscale_becomes_three_equal_channels(tmp_path: Path, rng: np.random.Generator) -> None:
    grey = rng.integers(0, 256, (16, 24), dtype=np.uint8)
    path = tmp_path / "grey.png"
    Image.fromarray(grey, mode="L").save(path)
    decoded = read_image(path)
    assert decoded.shape == (16, 24, 3) and decoded.dtype == np.uint8
    for channel in range(3):
        assert np.array_equal(decoded[..., channel], grey)


def test_sixteen_bit_is_scaled_not_clipped(tmp_path: Path, rng: np.random.Generator) -> None:
    wide = rng.integers(0, 65536, (12, 12), dtype=np.uint16)
    path = tmp_path / "wide.png"
    Image.fromarray(wide).save(path)
    decoded = read_image(path)
    expected = np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
    assert np.array_equal(decoded[..., 0], expected)
    assert decoded.max() > 200, "16-bit highlights must not be clipped to black or white"


def test_transparency_is_composited_over_white(rng: np.random.Generator) -> None:
    rgba = rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    rgba[:4, :, 3] = 0
    rgba[4:, :, 3] = 255
    decoded = pil_to_rgb(Image.fromarray(rgba, mode="RGBA"))
    assert np.array_equal(decoded[:4], np.full((4, 8, 3), 255, np.uint8))
    assert np.array_equal(decoded[4:], rgba[4:, :, :3])


def test_palette_and_cmyk_become_rgb(rng: np.random.Generator) -> None:
    rgb = Image.fromarray(rng.integers(0, 256, (10, 10, 3), dtype=np.uint8))
    for mode in ("P", "CMYK", "YCbCr"):
        decoded = pil_to_rgb(rgb.convert(mode))
        assert decoded.shape == (10, 10, 3) and decoded.dtype == np.uint8


def test_decompression_bombs_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(CleanDiftError, match="decompression bomb"):
        read_image(path)


def test_corrupt_and_truncated_files(tmp_path: Path, rng: np.random.Generator) -> None:
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"\x00definitely not an image")
    with pytest.raises(CleanDiftError, match="not an image Pillow can read"):
        read_image(junk)
    whole = tmp_path / "whole.png"
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(whole)
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole.read_bytes()[:300])
    with pytest.raises(CleanDiftError, match="corrupt or truncated"):
        read_image(cut)
    with pytest.raises(CleanDiftError, match="does not exist"):
        read_image(tmp_path / "missing.png")
