"""Fusion at run time: the SD and DINOv2 artifacts on the same images, descriptors assembled by
preset, ONNX Runtime against the PyTorch references, and matches mapped back to original pixels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cleandift_deploy.errors import CleanDiftError
from cleandift_deploy.eval.datasets import load_pairs
from cleandift_deploy.eval.photoset import make_synthetic
from cleandift_deploy.eval.protocol import MethodOptions, PairSample
from cleandift_deploy.export import ExportOptions, export_onnx
from cleandift_deploy.export.dinov2_export import DinoExportOptions, export_dinov2
from cleandift_deploy.methods.catalog import PRESETS, get_preset
from cleandift_deploy.methods.registry import build_method
from cleandift_deploy.models.dinov2 import random_dino
from cleandift_deploy.models.loading import LoadedUNet
from cleandift_deploy.runtime.fusion import (
    FusionExtractor,
    PairDescriptors,
    canvas_to_original,
    original_to_canvas,
)
from cleandift_deploy.runtime.preprocess import Placement

TAPS = ("us2", "us5", "us6", "us8")


@pytest.fixture(scope="module")
def artifacts(tiny: LoadedUNet, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("fusion")
    sd, dino = folder / "sd.onnx", folder / "dino.onnx"
    options = ExportOptions(
        taps=TAPS, image_size=(128, 128), size_range=((64, 64), (192, 192)), check_agreement=False
    )
    export_onnx(tiny, sd, options)
    dino_options = DinoExportOptions(size_range=((42, 42), (168, 168)), check_agreement=False)
    export_dinov2(random_dino("dinov2_tiny", 5), dino, dino_options)
    return sd, dino


def _images() -> list[np.ndarray]:
    return [torch.randint(0, 256, shape, dtype=torch.uint8).numpy() for shape in ((90, 150, 3),)]


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0)


@pytest.mark.parametrize("preset", ["geoaware", "sd-dino", "dift"])
def test_onnx_fusion_matches_the_pytorch_references(
    artifacts: tuple[Path, Path], preset: str
) -> None:
    sd, dino = artifacts
    source, target = _images()[0], torch.randint(0, 256, (120, 80, 3), dtype=torch.uint8).numpy()
    onnx = FusionExtractor.load(get_preset(preset), sd, dino)
    reference = FusionExtractor.load(get_preset(preset), sd, dino, backend="torch")
    found = onnx.describe_images(source, target)
    expected = reference.describe_images(source, target)
    assert found.source.shape == expected.source.shape
    for ours, theirs in ((found.source, expected.source), (found.target, expected.target)):
        assert float(_cosines(ours, theirs).min()) >= 0.9999
    assert set(found.seconds) == {"sd", "dino", "descriptor"}
    assert (found.seconds["dino"] > 0) == PRESETS[preset].dino
    if PRESETS[preset].dino:
        grid = found.source_features.dino
        assert grid is not None and found.source.shape[1:] == grid.shape[1:]
        assert found.source_features.sd_placement.offset != (0, 0)  # letterboxed
    else:
        assert found.source_features.sd_placement.content == onnx.sd.image_size  # squashed


def test_geoaware_part_norms(artifacts: tuple[Path, Path]) -> None:
    fusion = FusionExtractor.load(get_preset("geoaware"), *artifacts)
    features = fusion.features(_images()[0])
    descriptor = fusion.descriptor(features)
    sd_channels = sum(features.sd[t].shape[0] for t in ("us8", "us5", "us2"))
    torch.testing.assert_close(descriptor.norm(dim=0), torch.ones(descriptor.shape[1:]))
    torch.testing.assert_close(
        descriptor[:sd_channels].norm(dim=0), torch.full(descriptor.shape[1:], 0.5**0.5)
    )


@pytest.mark.parametrize("preset", ["geoaware", "sd-dino", "dift", "cleandift"])
def test_an_image_matched_with_itself_lands_within_a_cell(
    artifacts: tuple[Path, Path], preset: str
) -> None:
    fusion = FusionExtractor.load(get_preset(preset), *artifacts)
    image = _images()[0]
    pair: PairDescriptors = fusion.describe_images(image, image)
    points = torch.tensor([[10.0, 20.0], [75.0, 45.0], [140.0, 80.0]])
    found = fusion.match(pair, points)
    placement, canvas = pair.target_features.grid_frame(fusion.preset)
    cells = pair.target.shape[1:]
    cell_px = max(canvas[0] / cells[0] / (placement.content[0] / 90), 1.0)
    assert found.shape == (3, 2)
    assert float((found - points.double()).abs().max()) <= cell_px


def test_placement_mapping_round_trips() -> None:
    placement = Placement(original=(90, 150), content=(50, 84), offset=(17, 0))
    points = torch.rand(20, 2) * torch.tensor([149.0, 89.0])
    canvas = original_to_canvas(points, placement)
    assert float(canvas[:, 1].min()) >= 17 - 0.5 and float(canvas[:, 1].max()) <= 17 + 50
    torch.testing.assert_close(canvas_to_original(canvas, placement), points.double())
    centre = original_to_canvas(torch.tensor([[74.5, 44.5]]), placement)
    torch.testing.assert_close(centre, torch.tensor([[41.5, 41.5]], dtype=torch.float64))


def test_fusion_presets_need_a_dino_model(artifacts: tuple[Path, Path]) -> None:
    with pytest.raises(CleanDiftError, match="--dino"):
        FusionExtractor.load(get_preset("geoaware"), artifacts[0])
    with pytest.raises(CleanDiftError, match="unknown descriptor preset"):
        FusionExtractor.load(get_preset("nope"), artifacts[0])


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("synthetic")
    make_synthetic(folder, {"test": 3})
    return folder


@pytest.mark.parametrize("preset", ["geoaware", "sd-dino"])
def test_descriptor_method_onnx_agrees_with_pytorch_and_caches(
    artifacts: tuple[Path, Path], synthetic: Path, tmp_path: Path, preset: str
) -> None:
    sd, dino = artifacts
    samples = load_pairs(synthetic, "spair", "test")
    predictions = {}
    for backend in ("onnxruntime", "torch"):
        options = MethodOptions(
            model=sd, dino=dino, backend=backend, descriptor=preset, cache=tmp_path / backend
        )
        method = build_method("descriptor", options)
        predictions[backend] = np.concatenate([method.predict(s) for s in samples])
        images = {p for s in samples for p in (s.source_path, s.target_path)}
        assert method.cache.extractions == len(images)  # once per image
        record = method.describe()
        assert record["preset"] == preset and record["dino"]["backend"].startswith(backend[:5])
    # the same points, up to rare near-ties of random weights
    close = np.abs(predictions["onnxruntime"] - predictions["torch"]).max(axis=1) <= 0.5
    assert close.mean() >= 0.9
    again = build_method(
        "descriptor",
        MethodOptions(model=sd, dino=dino, descriptor=preset, cache=tmp_path / "onnxruntime"),
    )
    repeated = np.concatenate([again.predict(s) for s in samples])
    assert again.cache.extractions == 0
    np.testing.assert_array_equal(repeated, predictions["onnxruntime"])
    if preset == "sd-dino":
        assert "not cached" in record["pca"]["cache"]


def test_eval_pck_cli_with_a_descriptor_preset(
    artifacts: tuple[Path, Path], synthetic: Path, tmp_path: Path
) -> None:
    from export_helpers import run_cli

    sd, dino = artifacts
    out = tmp_path / "out"
    args = ["eval", "pck", "--data", str(synthetic), "--dataset", "spair"]
    code = run_cli([*args, "--method", "geoaware", "--model", str(sd), "--dino", str(dino),
                    "--out", str(out)])  # fmt: skip
    assert code == 0
    document = json.loads((out / "results.json").read_text())
    assert document["method"] == "geoaware" and document["model"]["preset"] == "geoaware"
    assert document["model"]["mode"] == "window-softargmax"
    assert run_cli([*args, "--method", "geoaware", "--model", str(sd),
                    "--out", str(tmp_path / "bad")]) == 2  # fmt: skip


def test_descriptor_method_runs_pytorch_models_without_artifacts(synthetic: Path) -> None:
    options = MethodOptions(
        descriptor="geoaware",
        arch="tiny",
        random_init=True,
        settings={"sd_size": "128", "dino_arch": "dinov2_tiny"},
    )
    method = build_method("descriptor", options)
    sample = load_pairs(synthetic, "spair", "test")[0]
    found = method.predict(sample)
    assert found.shape == sample.target_points.shape and np.isfinite(found).all()
    assert method.describe()["dino"]["backend"] == "torch-cpu"


def test_fitted_pca_bases_make_sd_dino_per_image(
    artifacts: tuple[Path, Path], synthetic: Path, tmp_path: Path
) -> None:
    from export_helpers import run_cli

    sd, dino = artifacts
    bases = tmp_path / "bases.safetensors"
    code = run_cli(["fit-pca", str(sd), str(synthetic / "JPEGImages"), "-o", str(bases),
                    "--size", "128"])  # fmt: skip
    assert code == 0
    options = MethodOptions(
        model=sd, dino=dino, descriptor="sd-dino", settings={"pca_bases": str(bases)}
    )
    method = build_method("descriptor", options)
    assert method.describe()["pca"]["fit"] == "fitted bases"
    samples = load_pairs(synthetic, "spair", "test")
    a, b, c = (method.features(p, "x") for p in (samples[0].source_path, *_targets(samples)))
    first, _ = method.fusion.pair(a, b)
    second, _ = method.fusion.pair(a, c)
    assert torch.equal(first, second)  # the source's descriptor no longer depends on the pair
    co_first, _ = FusionExtractor(PRESETS["sd-dino"], method.fusion.sd, method.fusion.dino).pair(
        a, b
    )
    assert not torch.equal(co_first, first)


def _targets(samples: list[PairSample]) -> list[Path]:
    paths = sorted({s.target_path for s in samples} - {samples[0].source_path})
    return paths[:2]
