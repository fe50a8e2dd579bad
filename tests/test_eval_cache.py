"""The feature cache extracts each image once, survives a new process and a damaged entry."""

from __future__ import annotations

from pathlib import Path

import torch

from cleandift_deploy.eval.cache import FeatureCache


def counting(value: torch.Tensor, calls: list[int]):
    def compute() -> dict[str, torch.Tensor]:
        calls.append(1)
        return {"us6": value.clone()}

    return compute


def test_second_run_extracts_nothing(tmp_path: Path) -> None:
    images = []
    for index in range(3):
        image = tmp_path / f"img{index}.jpg"
        image.write_bytes(bytes([index]) * 100)
        images.append(image)
    features = [torch.randn(1, 8, 4, 4) for _ in images]
    parts = {"manifest": "abc", "tap": "us6"}
    first = FeatureCache(tmp_path / "cache", memory_items=0)
    calls: list[int] = []
    for image, value in zip(images, features, strict=True):
        first.get_or_compute(parts, image, counting(value, calls))
    assert first.extractions == 3 and len(calls) == 3
    second = FeatureCache(tmp_path / "cache", memory_items=0)
    for image, value in zip(images, features, strict=True):
        got = second.get_or_compute(parts, image, counting(value, calls))
        assert torch.equal(got["us6"], value)
    assert second.extractions == 0 and second.hits == 3 and len(calls) == 3


def test_key_depends_on_parts_and_image_bytes(tmp_path: Path) -> None:
    image = tmp_path / "a.jpg"
    image.write_bytes(b"one")
    cache = FeatureCache(tmp_path / "cache")
    key = cache.key({"tap": "us6"}, image)
    assert key != cache.key({"tap": "us3"}, image)
    image.write_bytes(b"two")
    assert key != cache.key({"tap": "us6"}, image)


def test_a_damaged_entry_is_recomputed(tmp_path: Path) -> None:
    image = tmp_path / "a.jpg"
    image.write_bytes(b"pixels")
    value = torch.randn(2, 3)
    cache = FeatureCache(tmp_path / "cache", memory_items=0)
    calls: list[int] = []
    cache.get_or_compute({"k": "v"}, image, counting(value, calls))
    path = cache.path(cache.key({"k": "v"}, image))
    assert path is not None and path.is_file()
    path.write_bytes(b"garbage")
    again = FeatureCache(tmp_path / "cache", memory_items=0)
    assert torch.equal(
        again.get_or_compute({"k": "v"}, image, counting(value, calls))["us6"], value
    )
    assert again.extractions == 1 and len(calls) == 2


def test_without_root_recent_entries_stay_in_memory(tmp_path: Path) -> None:
    image = tmp_path / "a.jpg"
    image.write_bytes(b"pixels")
    cache = FeatureCache(None, memory_items=2)
    calls: list[int] = []
    for _ in range(3):
        cache.get_or_compute({"k": "v"}, image, counting(torch.randn(2), calls))
    assert cache.extractions == 1 and cache.hits == 2
    assert not any(tmp_path.rglob("*.safetensors"))
