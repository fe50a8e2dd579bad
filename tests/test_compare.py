"""`compare`: agreement figures, exit codes, golden files in Polygraphy's formats."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from export_helpers import run_cli
from onnx import numpy_helper
from safetensors.torch import save_file

from cleandift_deploy.export import ExportOptions, export_onnx, tap_agreement
from cleandift_deploy.export.golden import INPUTS_FILE, OUTPUTS_FILE
from cleandift_deploy.models import random_unet
from cleandift_deploy.models.loading import LoadedUNet


def test_identical_outputs_agree_perfectly() -> None:
    reference = np.random.default_rng(1).standard_normal((2, 16, 6, 5)).astype(np.float32)
    found = tap_agreement(reference, reference.copy())
    assert found.cosine_min == pytest.approx(1.0) and found.relative_l2 == 0.0
    assert found.max_abs == 0.0 and found.match_agreement == 1.0 and found.nonfinite == 0


def test_figures_follow_their_definitions() -> None:
    rng = np.random.default_rng(2)
    reference = rng.standard_normal((2, 8, 5, 7))
    noise = 0.01 * rng.standard_normal(reference.shape)
    found = tap_agreement(reference, reference + noise)
    assert found.relative_l2 == pytest.approx(np.linalg.norm(noise) / np.linalg.norm(reference))
    assert found.max_abs == pytest.approx(np.abs(noise).max())
    flat_ref = reference[:, :, 2, 3]
    flat_new = flat_ref + noise[:, :, 2, 3]
    cosines = (flat_ref * flat_new).sum(1) / (
        np.linalg.norm(flat_ref, axis=1) * np.linalg.norm(flat_new, axis=1)
    )
    assert found.cosine_min <= cosines.min() + 1e-12


def test_nonfinite_values_and_shuffled_matches_are_caught() -> None:
    rng = np.random.default_rng(3)
    reference = rng.standard_normal((2, 32, 8, 8)).astype(np.float32)
    broken = reference.copy()
    broken[0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
    assert tap_agreement(reference, broken).nonfinite == 3
    shuffled = reference.copy()
    shuffled[1] = reference[1][:, ::-1, ::-1]
    found = tap_agreement(reference, shuffled)
    assert found.match_agreement < 0.5
    assert found.failures("fp16")


@pytest.fixture(scope="module")
def exported(tiny: LoadedUNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compare") / "tiny.onnx"
    export_onnx(tiny, out, ExportOptions(batch=(1, 2, 2), check_agreement=False))
    return out


def _tampered(exported: Path, folder: Path) -> Path:
    """A copy whose UNet weights were changed after export (manifest unchanged)."""
    model = onnx.load(str(exported))
    for tensor in model.graph.initializer:
        if "features.up_blocks.1.resnets.0.conv1.weight" in tensor.name:
            values = numpy_helper.to_array(tensor) * 1.5
            tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    out = folder / "tampered.onnx"
    onnx.save_model(model, str(out))
    shutil.copy(exported.with_suffix(".json"), out.with_suffix(".json"))
    return out


def test_compare_exit_codes(
    exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(["compare", str(exported)]) == 0
    assert "us6" in capsys.readouterr().out
    assert run_cli(["compare", str(_tampered(exported, tmp_path))]) == 1
    assert "below threshold" in capsys.readouterr().err


def test_golden_round_trip(
    exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from polygraphy.comparator import RunResults
    from polygraphy.json import load_json

    golden = tmp_path / "golden"
    assert run_cli(["compare", str(exported), "--save-golden", str(golden)]) == 0
    batches = load_json(str(golden / INPUTS_FILE))
    results = RunResults.load(str(golden / OUTPUTS_FILE))
    assert batches[0]["image"].dtype == np.uint8
    assert list(results[0][1][0].keys()) == ["us6"]
    assert run_cli(["compare", str(exported), "--golden", str(golden)]) == 0
    assert run_cli(["compare", str(_tampered(exported, tmp_path)), "--golden", str(golden)]) == 1
    capsys.readouterr()
    both = ["compare", str(exported), "--golden", str(golden), "--save-golden", str(golden)]
    assert run_cli(both) == 2
    assert "not both" in capsys.readouterr().err


def test_compare_refuses_another_checkpoint(
    exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other_unet.safetensors"
    state = random_unet("tiny", seed=9).unet.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(other))
    assert run_cli(["compare", str(exported), "--reference", str(other)]) == 2
    assert "not the checkpoint the artifact was exported from" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_onnx_is_refused(
    exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    broken = tmp_path / "broken.onnx"
    data = exported.read_bytes()
    broken.write_bytes(b"\x00garbage" * 64 if damage == "garbage" else data[: len(data) // 2])
    assert run_cli(["compare", str(broken)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert run_cli(["build", str(broken), "-o", str(tmp_path / "b.engine")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "b.engine").exists()
