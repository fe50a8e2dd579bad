"""The features method and `eval pck` on the tiny model: DIFT's procedure reproduced exactly,
pad-resized images mapped back, the report recomputable, the cache reused, backends agreeing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from runtime_helpers import export_tiny

from cleandift_deploy.cli import main
from cleandift_deploy.eval.datasets import load_pairs
from cleandift_deploy.eval.photoset import make_synthetic
from cleandift_deploy.eval.protocol import MethodOptions, PairSample
from cleandift_deploy.eval.scoring import evaluate
from cleandift_deploy.methods.features import FeaturesMethod, Prompts
from cleandift_deploy.methods.registry import build_method
from cleandift_deploy.models.loading import LoadedUNet
from cleandift_deploy.runtime.extractor import FeatureExtractor
from cleandift_deploy.runtime.images import read_image
from cleandift_deploy.runtime.torch_reference import ReferenceSpec

SIZE = (64, 64)
ALPHAS = (0.01, 0.05, 0.1, 0.15)


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    make_synthetic(root, {"test": 24}, seed=11, max_side=160)
    return root


@pytest.fixture(scope="module")
def onnx32(tiny: LoadedUNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny(tiny, tmp_path_factory.mktemp("fp32") / "tiny.onnx", image_size=SIZE)


def dift_prediction(extractor: FeatureExtractor, sample: PairSample) -> np.ndarray:
    """DIFT's procedure: upsample both maps to the original sizes, normalise, argmax."""
    maps = []
    for path in (sample.source_path, sample.target_path):
        features = extractor.extract([read_image(path)]).taps["us6"]
        with Image_size(path) as (width, height):
            up = F.interpolate(features, size=(height, width), mode="bilinear")
        maps.append(F.normalize(up[0], dim=0))
    source, target = maps
    channels, height, width = target.shape
    predicted = []
    for x, y in sample.source_points:
        query = source[:, int(np.floor(y + 0.5)), int(np.floor(x + 0.5))]
        index = int((query @ target.reshape(channels, -1)).argmax())
        predicted.append([index % width, index // width])
    return np.array(predicted, dtype=np.float64)


class Image_size:
    """(W, H) of an image file, as a context manager over PIL's lazy open."""

    def __init__(self, path: Path) -> None:
        from PIL import Image

        self.image = Image.open(path)

    def __enter__(self) -> tuple[int, int]:
        return self.image.size

    def __exit__(self, *args: object) -> None:
        self.image.close()


def test_predictions_equal_dift_upsample_normalise_argmax(photos: Path, onnx32: Path) -> None:
    method = build_method("features", MethodOptions(model=onnx32))
    samples = load_pairs(photos, "spair", "test", limit=1)
    assert len({s.category for s in samples}) >= 4
    for sample in samples:
        np.testing.assert_array_equal(
            method.predict(sample), dift_prediction(method.extractor, sample)
        )


class PositionExtractor:
    """A stand-in extractor whose features encode each cell's position relative to the image
    content (real preprocessing decides the placement): the true match of a point is known."""

    manifest_sha256 = "positions"
    backend_name = "positions"
    image_size = (128, 128)
    stride = 8

    def __init__(self, resize: str, manifest) -> None:
        self.resize = resize
        self.manifest = manifest

    def extract(self, images, encoder_hidden_states=None):
        from cleandift_deploy.runtime.extractor import Features
        from cleandift_deploy.runtime.preprocess import prepare

        placement = prepare(images, self.image_size, self.resize).placements[0]
        cells = [(torch.arange(n // self.stride) + 0.5) * self.stride for n in self.image_size]
        v = (cells[0][:, None] - placement.offset[0]) / placement.content[0]
        u = (cells[1][None, :] - placement.offset[1]) / placement.content[1]
        angle = torch.pi / 2
        planes = [
            torch.cos(angle * v),
            torch.sin(angle * v),
            torch.cos(angle * u),
            torch.sin(angle * u),
        ]
        shape = (len(cells[0]), len(cells[1]))
        tap = torch.stack([p.expand(shape) for p in planes])[None].float()
        return Features({"us6": tap}, [placement])


@pytest.mark.parametrize("resize", ["pad", "letterbox", "squash"])
def test_matches_map_back_to_original_pixels(
    photos: Path, onnx32: Path, tmp_path: Path, resize: str
) -> None:
    """Source: a photo; target: the photo at half size. With position-encoding features every
    point must land on its half-size position, within one matching-grid pixel."""
    from PIL import Image

    manifest = FeatureExtractor.load(onnx32).manifest
    method = FeaturesMethod(MethodOptions(), PositionExtractor(resize, manifest))  # type: ignore[arg-type]
    pair = load_pairs(photos, "spair", "test", categories=["cup"], limit=1)[0]
    width, height = pair.source_size
    half = tmp_path / "half.png"
    with Image.open(pair.source_path) as image:
        image.resize((width // 2, height // 2), Image.Resampling.BILINEAR).save(half)
    # a cell from the border: past the outer cell centres upsampled maps are flat (ties)
    margin = PositionExtractor.stride * max(width, height) / 128 + 2
    points = np.random.default_rng(0).uniform(margin, [width - margin, height - margin], (40, 2))
    truth = (points + 0.5) * 0.5 - 0.5
    same = PairSample("half", "cup", pair.source_path, half, pair.source_size,
                      (width // 2, height // 2), points, truth, None, None)  # fmt: skip
    predicted = method.predict(same)
    grid_pixel = max(width // 2, height // 2) / 128 if resize != "squash" else 1.0
    assert np.abs(predicted - truth).max() <= grid_pixel + 0.5
    assert np.abs(predicted - truth).mean() < 0.5 * grid_pixel + 0.25


def recompute(lines: list[dict], alpha: float) -> dict[str, float]:
    """per_point and per_image PCK straight from predictions.jsonl."""
    hits = [
        np.linalg.norm(np.array(r["predicted"]) - np.array(r["truth"]), axis=1)
        <= r[f"threshold_{alpha}"]
        for r in lines
    ]
    return {
        "per_point": float(np.concatenate(hits).mean()),
        "per_image": float(np.mean([h.mean() for h in hits])),
    }


def test_eval_pck_report_recomputes_and_second_run_extracts_nothing(
    photos: Path, onnx32: Path, tmp_path: Path
) -> None:
    base = ["eval", "pck", "--data", str(photos), "--dataset", "spair", "--model", str(onnx32)]
    cache = ["--cache", str(tmp_path / "cache"), "--limit", "2"]
    main([*base, *cache, "--out", str(tmp_path / "one")])
    results = json.loads((tmp_path / "one" / "results.json").read_text())
    assert results["dataset"] == "spair" and results["convention"] == "bbox"
    assert results["tap"] == "us6" and results["mode"] == "nn"
    assert list(results["pck"]) == ["0.01", "0.05", "0.1", "0.15"]
    lines = [
        json.loads(x) for x in (tmp_path / "one" / "predictions.jsonl").read_text().split("\n") if x
    ]
    assert (
        len(lines) == results["pairs"] and sum(len(r["truth"]) for r in lines) == results["points"]
    )
    for alpha in ("0.01", "0.1", "0.15"):
        table = results["pck"][alpha]
        assert recompute(lines, alpha) == {k: table[k] for k in ("per_point", "per_image")}
        for category, values in table["per_category"].items():
            chosen = [r for r in lines if r["category"] == category]
            assert recompute(chosen, alpha) == values
    images = {p.source_path for p in load_pairs(photos, "spair", "test", limit=2)}
    images |= {p.target_path for p in load_pairs(photos, "spair", "test", limit=2)}
    assert results["cache"]["extractions"] == len(images)
    assert results["model"]["prompt"] == {"kind": "baked", "prompt": ""}
    assert len(list((tmp_path / "one" / "pictures").glob("*.png"))) >= 5
    assert "| **mean over categories** |" in (tmp_path / "one" / "results.md").read_text()
    main([*base, *cache, "--out", str(tmp_path / "two"), "--no-pictures"])
    again = json.loads((tmp_path / "two" / "results.json").read_text())
    assert again["cache"]["extractions"] == 0 and again["pck"] == results["pck"]


def test_eval_pck_bad_input_is_one_line(photos: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "pck", "--data", str(tmp_path / "none"), "--dataset", "spair",
              "--model", "x.onnx", "--out", str(tmp_path / "o")])  # fmt: skip
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith("error: no dataset folder") and error.count("\n") == 1
    with pytest.raises(SystemExit):
        main(["eval", "pck", "--data", str(photos), "--dataset", "spair", "--method", "nope",
              "--out", str(tmp_path / "o")])  # fmt: skip
    assert "unknown method 'nope'" in capsys.readouterr().err


def pck_at(method: FeaturesMethod, samples: list[PairSample]) -> float:
    evaluation = evaluate(method, samples, ALPHAS, "bbox", show_progress=False)
    return float(evaluation.pck["0.1"]["per_point"])


@pytest.fixture(scope="module")
def reference_pck(onnx32: Path, photos: Path) -> float:
    """PCK@0.1 of the artifact's PyTorch reference (the same for the fp32 and fp16 exports:
    both come from one checkpoint and graph spec, and the reference runs in fp32)."""
    samples = load_pairs(photos, "spair", "test")
    return pck_at(FeaturesMethod(MethodOptions(model=onnx32, backend="torch")), samples)


@pytest.mark.parametrize(("precision", "points"), [("fp32", 0.1), ("fp16", 0.5)])
def test_artifact_and_pytorch_reference_agree_in_pck(
    tiny: LoadedUNet,
    onnx32: Path,
    photos: Path,
    reference_pck: float,
    tmp_path: Path,
    precision: str,
    points: float,
) -> None:
    artifact = onnx32
    if precision == "fp16":
        artifact = export_tiny(tiny, tmp_path / "half.onnx", image_size=SIZE, precision="fp16")
    samples = load_pairs(photos, "spair", "test")
    assert sum(len(s.source_points) for s in samples) >= 300
    method = FeaturesMethod(MethodOptions(model=artifact, backend="onnxruntime"))
    assert method.describe()["backend"].startswith("onnxruntime")
    exported = pck_at(method, samples)
    assert 0.05 < reference_pck < 0.95
    assert abs(exported - reference_pck) * 100 <= points


def test_prompt_input_models_get_a_prompt_per_category(tiny: LoadedUNet, photos: Path) -> None:
    spec = ReferenceSpec(taps=("us6",), prompt_input=True)
    extractor = FeatureExtractor.from_source(tiny, spec=spec, image_size=SIZE)
    method = FeaturesMethod(MethodOptions(), extractor)
    assert method.describe()["prompt"] == {
        "kind": "per-category",
        "template": "a photo of a {category}",
    }
    prompts = method.prompts
    cat, cup = prompts.embedding("cat"), prompts.embedding("cup")
    assert cat is not None and cup is not None and not torch.equal(cat, cup)
    assert prompts.text("cat") == "a photo of a cat"
    pair = load_pairs(photos, "spair", "test", limit=1)[0]
    as_cat = method.grid(pair.source_path, "cat").features
    as_cup = method.grid(pair.source_path, "cup").features
    assert method.cache.extractions == 2 and not torch.equal(as_cat, as_cup)
    baked = Prompts(FeatureExtractor.from_source(tiny, image_size=SIZE).manifest, MethodOptions())
    assert baked.embedding("cat") is None and baked.describe()["kind"] == "baked"
