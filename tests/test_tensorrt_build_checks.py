"""TensorRT builder checks that need no GPU (fake TensorRT objects): the build GPU recorded in the
manifest and checked at load, a parse failure with no parser errors, and a refused timing cache
replaced by a fresh one (never touched under TensorRT-RTX)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from runtime_helpers import engine_manifest

from cleandift_deploy.errors import CleanDiftError
from cleandift_deploy.export.tensorrt_build import (
    BuildOptions,
    engine_target,
    load_timing_cache,
    parse_onnx,
)
from cleandift_deploy.runtime.tensorrt_backend import check_build_gpu

H100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


def test_build_gpu_is_recorded_and_checked_at_load() -> None:
    target = engine_target(BuildOptions(target="tensorrt"), H100)
    assert target["build_gpu"] == H100 and target["compute_capabilities"] == ["9.0"]
    assert target["hardware_compatibility"] == "none"
    check_build_gpu(engine_manifest(**target), (9, 0))
    with pytest.raises(
        CleanDiftError, match=r"built for compute capability 9\.0, this GPU is 8\.0"
    ):
        check_build_gpu(engine_manifest(**target), (8, 0))


def test_hardware_compatible_engines_run_on_ampere_and_newer() -> None:
    target = engine_target(BuildOptions(target="tensorrt", hardware_compatible=True), H100)
    assert target["hardware_compatibility"] == "ampere_plus"
    for device in ((8, 0), (8, 6), (9, 0), (12, 0)):
        check_build_gpu(engine_manifest(**target), device)
    with pytest.raises(CleanDiftError, match="Ampere and newer"):
        check_build_gpu(engine_manifest(**target), (7, 5))


def test_rtx_target_records_its_capabilities_not_a_build_gpu() -> None:
    target = engine_target(BuildOptions(compute_capabilities=("8.6",)), {})
    assert target == {"runtime": "tensorrt-rtx", "compute_capabilities": ["8.6"]}


class FakeParser:
    def __init__(self, errors: list[str]) -> None:
        self.errors = errors

    def parse_from_file(self, path: str) -> bool:
        return False

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> str:
        return self.errors[index]


def _trt_with_parser(errors: list[str]) -> Any:
    return SimpleNamespace(
        NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=0),
        OnnxParser=lambda network, logger: FakeParser(errors),
    )


def test_parse_failure_is_one_line_with_or_without_parser_errors(tmp_path: Path) -> None:
    builder: Any = SimpleNamespace(create_network=lambda flags: object())
    graph = tmp_path / "m.onnx"
    with pytest.raises(CleanDiftError, match="recorded no error") as empty:
        parse_onnx(_trt_with_parser([]), builder, graph, None)
    assert "\n" not in str(empty.value)
    with pytest.raises(CleanDiftError, match=r"Unsupported op Foo$"):
        parse_onnx(_trt_with_parser(["", "Unsupported op Foo\nmore"]), builder, graph, None)


class FakeConfig:
    """Accepts only caches whose bytes start with b"this-gpu" (or empty ones)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def create_timing_cache(self, data: bytes) -> Any:
        self.calls.append("create")
        return SimpleNamespace(data=data)

    def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> bool:
        self.calls.append("set")
        assert ignore_mismatch is False
        return cache.data in (b"",) or cache.data.startswith(b"this-gpu")


def test_refused_timing_cache_is_replaced_by_a_fresh_one(tmp_path: Path) -> None:
    path = tmp_path / "timing.cache"
    path.write_bytes(b"other-gpu cache")
    config = FakeConfig()
    with pytest.warns(RuntimeWarning, match="refused the timing cache"):
        cache = load_timing_cache(config, path, "tensorrt")
    assert cache.data == b""
    path.write_bytes(b"this-gpu cache")
    assert load_timing_cache(FakeConfig(), path, "tensorrt").data == b"this-gpu cache"
    assert load_timing_cache(FakeConfig(), tmp_path / "new.cache", "tensorrt").data == b""


def test_timing_cache_is_left_alone_under_rtx_or_without_a_path(tmp_path: Path) -> None:
    config = FakeConfig()
    assert load_timing_cache(config, tmp_path / "timing.cache", "tensorrt-rtx") is None
    assert load_timing_cache(config, None, "tensorrt") is None
    assert config.calls == []


def test_hardware_compatibility_is_refused_for_rtx() -> None:
    from cleandift_deploy.export.tensorrt_build import _configure

    network = SimpleNamespace(num_inputs=0)
    builder = SimpleNamespace(
        create_builder_config=lambda: SimpleNamespace(
            set_memory_pool_limit=lambda pool, size: None,
            add_optimization_profile=lambda profile: None,
        ),
        create_optimization_profile=lambda: object(),
    )
    trt = SimpleNamespace(MemoryPoolType=SimpleNamespace(WORKSPACE=0))
    options = BuildOptions(hardware_compatible=True)
    with pytest.raises(CleanDiftError, match="applies to --target tensorrt"):
        _configure(trt, builder, network, engine_manifest(), options)
