"""bf16 behind the fidelity gate, and `auto` by measurement, on the tiny model."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from export_helpers import run_cli
from runtime_helpers import export_tiny, random_rgb

from cleandift_deploy.errors import CleanDiftError
from cleandift_deploy.models.loading import LoadedUNet
from cleandift_deploy.runtime import engine_choice, fidelity_gate
from cleandift_deploy.runtime.extractor import FeatureExtractor
from cleandift_deploy.runtime.openvino_backend import CACHE_ENV
from cleandift_deploy.runtime.precision import PrecisionRequest
from cleandift_deploy.serve.app import FeatureService, Item, ServeConfig

SIZE = (64, 64)


@pytest.fixture(scope="module")
def exported(tiny: LoadedUNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gate") / "tiny.onnx"
    return export_tiny(tiny, out, image_size=SIZE, size_range=(SIZE, (128, 128)))


@pytest.fixture
def onnx_path(
    exported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmp_path_factory
) -> Path:
    """The shared export with no stored gate record, and fresh caches for each test."""
    fidelity_gate.gate_path(exported).unlink(missing_ok=True)
    # The gate's arithmetic is the same on every CPU; CPUs without bf16 units have their own test.
    monkeypatch.setattr(engine_choice, "has_bf16_gemm_isa", lambda: True)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path_factory.getbasetemp() / "openvino-gate"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return exported


@pytest.fixture
def calibration(tmp_path: Path) -> Path:
    from PIL import Image

    folder = tmp_path / "calibration"
    folder.mkdir()
    generator = np.random.default_rng(7)
    for index in range(3):
        Image.fromarray(random_rgb(80, 96, generator)).save(folder / f"{index}.png")
    return folder


def _images(count: int = 2) -> list[np.ndarray]:
    generator = np.random.default_rng(11)
    return [random_rgb(*SIZE, generator) for _ in range(count)]


def test_gate_accepts_bf16_when_the_bar_is_met(onnx_path: Path, calibration: Path) -> None:
    exact = FeatureExtractor.load(onnx_path)
    fast = FeatureExtractor.load(
        onnx_path, precision="bf16", calibration=calibration, min_agreement=0.0
    )
    assert fast.selection.backend == "openvino-bf16"
    assert fast.backend_name == "openvino-cpu-bf16"
    assert fast.selection.fidelity is not None
    assert 0.0 <= fast.selection.fidelity["agreement"] <= 1.0
    images = _images()
    reference, candidate = exact(images)["us6"], fast(images)["us6"]
    cosine = torch.nn.functional.cosine_similarity(reference, candidate, dim=1).min()
    assert cosine > 0.99
    assert not torch.equal(reference, candidate)


def test_gate_accepts_torch_bf16_which_differs_from_fp32(
    onnx_path: Path, calibration: Path
) -> None:
    exact = FeatureExtractor.load(onnx_path, backend="torch")
    fast = FeatureExtractor.load(
        onnx_path, backend="torch", precision="bf16", calibration=calibration, min_agreement=0.0
    )
    assert fast.selection.backend == "torch-bf16"
    images = _images()
    reference, candidate = exact(images)["us6"], fast(images)["us6"]
    assert not torch.equal(reference, candidate)
    assert torch.nn.functional.cosine_similarity(reference, candidate, dim=1).min() > 0.99


def test_gate_refuses_bf16_below_the_bar(
    onnx_path: Path, calibration: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exact = FeatureExtractor.load(onnx_path)
    gated = FeatureExtractor.load(
        onnx_path, precision="bf16", calibration=calibration, min_agreement=1.01
    )
    assert gated.selection.backend == "onnxruntime"
    assert "refused" in gated.selection.reason
    assert "notice: bf16 kept" in capsys.readouterr().err
    images = _images()
    assert torch.equal(exact(images)["us6"], gated(images)["us6"])


def test_stored_measurement_is_reused_and_invalidated(
    onnx_path: Path, calibration: Path, tiny: LoadedUNet, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = FeatureExtractor.load(onnx_path, precision="bf16", calibration=calibration)
    record = fidelity_gate.gate_path(onnx_path)
    assert record.is_file()

    def refuse(*args: object) -> None:
        raise AssertionError("measured again")

    monkeypatch.setattr(engine_choice, "measure_fidelity", refuse)
    again = FeatureExtractor.load(onnx_path, precision="bf16", calibration=calibration)
    assert again.selection.fidelity == first.selection.fidelity

    other = export_tiny(tiny, onnx_path.with_name("other.onnx"), image_size=SIZE, taps=("us3",))
    fidelity_gate.gate_path(other).unlink(missing_ok=True)
    with pytest.raises(AssertionError, match="measured again"):
        FeatureExtractor.load(other, precision="bf16", calibration=calibration)
    monkeypatch.setattr(fidelity_gate, "cpu_description", lambda: "another CPU")
    with pytest.raises(AssertionError, match="measured again"):
        FeatureExtractor.load(onnx_path, precision="bf16", calibration=calibration)


def test_damaged_record_is_ignored_with_a_notice(
    onnx_path: Path, calibration: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fidelity_gate.gate_path(onnx_path).write_text("{not json")
    gated = FeatureExtractor.load(
        onnx_path, precision="bf16", calibration=calibration, min_agreement=0.0
    )
    assert "ignoring damaged" in capsys.readouterr().err
    assert gated.selection.fidelity is not None
    assert "format" in fidelity_gate.gate_path(onnx_path).read_text()


def test_cpu_without_bf16_units_runs_exact(
    onnx_path: Path,
    calibration: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(engine_choice, "has_bf16_gemm_isa", lambda: False)
    gated = FeatureExtractor.load(
        onnx_path, precision="bf16", calibration=calibration, min_agreement=0.0
    )
    assert gated.selection.backend == "onnxruntime"
    assert "emulated" in gated.selection.reason
    assert "notice: this CPU has no AMX" in capsys.readouterr().err
    assert not fidelity_gate.gate_path(onnx_path).exists()


def test_bf16_without_calibration_is_refused(onnx_path: Path) -> None:
    with pytest.raises(CleanDiftError, match="needs calibration images"):
        FeatureExtractor.load(onnx_path, precision="bf16")


def test_gate_needs_two_images(onnx_path: Path) -> None:
    with pytest.raises(CleanDiftError, match="at least 2"):
        FeatureExtractor.load(onnx_path, precision="bf16", calibration=_images(1))


def test_auto_times_both_exact_engines_once(
    onnx_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(engine_choice.PIN_ENV)
    seconds = {"onnxruntime-cpu": 2.0, "openvino-cpu": 1.0}
    monkeypatch.setattr(engine_choice, "_seconds", lambda fx, batch: seconds[fx.backend_name])
    chosen = FeatureExtractor.load(onnx_path)
    assert chosen.selection.backend == "openvino"
    assert chosen.backend_name == "openvino-cpu"
    assert chosen.selection.timings == {"onnxruntime": 2.0, "openvino": 1.0}

    def refuse(*args: object) -> float:
        raise AssertionError("timed again")

    monkeypatch.setattr(engine_choice, "_seconds", refuse)
    cached = FeatureExtractor.load(onnx_path)
    assert cached.backend_name == "openvino-cpu"
    assert "timed earlier" in cached.selection.reason
    with pytest.raises(AssertionError, match="timed again"):
        FeatureExtractor.load(onnx_path, image_size=(128, 128))


def test_auto_times_for_real(onnx_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(engine_choice.PIN_ENV)
    chosen = FeatureExtractor.load(onnx_path)
    assert set(chosen.selection.timings) == {"onnxruntime", "openvino"}
    fastest = min(chosen.selection.timings, key=chosen.selection.timings.__getitem__)
    assert chosen.selection.backend == fastest


def test_bad_pin_is_refused(onnx_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(engine_choice.PIN_ENV, "tensorrt")
    with pytest.raises(CleanDiftError, match="CLEANDIFT_CPU_ENGINE"):
        FeatureExtractor.load(onnx_path)


def test_extract_cli_runs_bf16_only_past_the_gate(
    onnx_path: Path,
    calibration: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    photos = calibration
    accepted = ["extract", "--model", str(onnx_path), str(photos), "--precision", "bf16"]
    accepted += ["--calibration-images", str(calibration), "--min-agreement", "0"]
    assert run_cli([*accepted, "--out", str(tmp_path / "a")]) == 0
    assert "engine: openvino-bf16 (bf16 passed the fidelity gate" in capsys.readouterr().err
    refused = [*accepted[:-1], "1.01", "--out", str(tmp_path / "b")]
    assert run_cli(refused) == 0
    err = capsys.readouterr().err
    assert "engine: onnxruntime (bf16 refused by the fidelity gate" in err
    assert len(list((tmp_path / "b").glob("*.safetensors"))) == 3


def test_extract_cli_bf16_needs_calibration(
    onnx_path: Path, calibration: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["extract", "--model", str(onnx_path), str(calibration), "--out", str(tmp_path / "o")]
    assert run_cli([*base, "--precision", "bf16"]) == 2
    assert "needs calibration images" in capsys.readouterr().err
    assert run_cli([*base, "--calibration-images", str(calibration)]) == 2
    assert "is for --precision bf16" in capsys.readouterr().err


def _settled(service: FeatureService, timeout_s: float = 300.0) -> dict[str, object]:
    """The deferred gate's progress once it has decided (or failed)."""
    assert service.calibration is not None
    deadline = time.monotonic() + timeout_s
    while service.calibration.snapshot()["state"] in ("collecting", "measuring"):
        assert time.monotonic() < deadline, service.calibration.snapshot()
        time.sleep(0.05)
    return service.calibration.snapshot()


@pytest.mark.parametrize(("bar", "engine"), [(0.0, "openvino-bf16"), (1.01, "onnxruntime")])
def test_serve_measures_the_gate_on_its_first_requests(
    onnx_path: Path, bar: float, engine: str
) -> None:
    wanted = PrecisionRequest("bf16", None, bar, calibrate_on_requests=3)
    service = FeatureService(ServeConfig(str(onnx_path), max_batch=2, precision=wanted))
    service.load()
    assert service.extractor is not None and service.extractor.selection.backend == "onnxruntime"
    images = _images(3)
    exact = service.run_batch([Item(images[0], None), Item(images[1], None)])
    assert service.calibration is not None
    assert service.calibration.snapshot()["state"] == "collecting"
    service.run_batch([Item(images[2], None)])
    settled = _settled(service)
    assert settled["state"] == "done" and str(settled["outcome"]).startswith(engine)
    assert service.extractor.selection.backend == engine
    assert service.extractor.selection.fidelity is not None
    after = service.run_batch([Item(images[0], None)])[0].taps["us6"]
    assert _settled(service)["collected"] == 3  # later requests start no second measurement
    before = exact[0].taps["us6"]
    assert torch.equal(before, after) == (engine == "onnxruntime")
    assert torch.nn.functional.cosine_similarity(before, after, dim=0).min() > 0.99


def test_serve_cli_calibration_options_are_checked_before_anything_starts(
    onnx_path: Path, calibration: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    serve = ["serve", str(onnx_path)]
    assert run_cli([*serve, "--calibrate-on-requests", "4"]) == 2
    assert "--calibrate-on-requests is for --precision bf16" in capsys.readouterr().err
    assert run_cli([*serve, "--precision", "bf16"]) == 2
    assert "or --calibrate-on-requests N" in capsys.readouterr().err
    assert run_cli([*serve, "--precision", "bf16", "--calibrate-on-requests", "1"]) == 2
    assert "at least 2 images" in capsys.readouterr().err
    both = ["--calibration-images", str(calibration), "--calibrate-on-requests", "4"]
    assert run_cli([*serve, "--precision", "bf16", *both]) == 2
    assert "not both" in capsys.readouterr().err
