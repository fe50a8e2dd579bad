"""`make demo`: the main job on the embedded default, end to end on the CPU.

The tiny architecture with random weights (no weights can be downloaded here) is exported to ONNX,
run in ONNX Runtime, checked against the PyTorch reference on a real photograph and a warp of it,
and scored with `eval pck` on a known-truth set made from scikit-image's bundled photographs.
Outputs land in `demo-out/`.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.console import Console

from .cli import cli
from .cli.export import agreement_table
from .eval.datasets import load_pairs
from .eval.draw import draw_matches
from .eval.pck import pair_score
from .eval.photoset import make_synthetic
from .eval.protocol import PairSample
from .export import ExportOptions, export_onnx
from .export.agreement import compare_outputs
from .kernels import match_points
from .manifest import Manifest
from .models import random_unet
from .models.loading import LoadedUNet
from .runtime.extractor import FeatureExtractor
from .runtime.pca import save_pca_panel

OUT = Path("demo-out")
SIZE = 256
TAPS = ("us3", "us6")
PAIRS = {"trn": 4, "val": 2, "test": 12}
PHOTO_SIDE = 320


MODEL = OUT / "tiny_us3_us6.onnx"
PAGE_PORT = 8000


def export_demo_model(loaded: LoadedUNet) -> Manifest:
    """The demo's model: the tiny architecture's us3 and us6 taps, uint8 256x256 images in."""
    options = ExportOptions(taps=TAPS, image_size=(SIZE, SIZE), random_init=True, force=True)
    return export_onnx(loaded, MODEL, options)


def draw_pair(
    pair: PairSample, images: list[Image.Image], features: torch.Tensor, engine: str
) -> Path:
    """matches.png: the pair's known points matched with the artifact's features (title, score,
    legend, and where each wrong match should have gone)."""
    (source_w, source_h), (target_w, target_h) = pair.source_size, pair.target_size
    query = torch.from_numpy(pair.source_points).float()
    found = match_points(
        features[0], features[1], query, (source_h, source_w), (target_h, target_w)
    )
    predicted = found.points.numpy().astype(np.float64)
    score = pair_score(pair, predicted, "bbox")
    tolerance = 0.1 * score.length
    correct = score.distances <= tolerance
    title = [
        f"demo: {pair.source_path.name} (left) and a random warp of it (right), matched with "
        f"the tiny model's us6 features in {engine}",
        f"{int(correct.sum())} of {len(correct)} known points within {tolerance:.0f} px "
        "(PCK@0.1 of the object box); random weights, so this shows the pipeline, not quality",
    ]
    path = OUT / "matches.png"
    draw_matches(
        images[0], images[1], pair.source_points, predicted, path, correct,
        title=title, truth=pair.target_points, tolerance=tolerance,
    )  # fmt: skip
    return path


def draw_pca(pair: PairSample, images: list[Image.Image], features: torch.Tensor) -> list[Path]:
    """pca_us6_source.png / _target.png: each photo beside its features' PCA picture."""
    written = []
    for which, image, path, feature in zip(
        ("source", "target"), images, (pair.source_path, pair.target_path), features, strict=True
    ):
        out = OUT / f"pca_us6_{which}.png"
        title = (
            f"{which} image {path.name} ({image.width}x{image.height}): the photo and its us6 "
            "features (tiny model, random weights)"
        )
        save_pca_panel(image, feature, out, title, "us6")
        written.append(out)
    return written


def page() -> None:
    """`make page`: the correspondence page on the demo's model (exported first if missing),
    served by the local server until Ctrl-C; prints the page's address."""
    if not MODEL.exists():
        export_demo_model(random_unet("tiny", seed=0))
    args = ["serve", str(MODEL), "--port", str(PAGE_PORT)]
    cli.main(args=args, prog_name="cleandift-deploy", standalone_mode=False)


def main() -> None:
    """Export, compare, make a known-truth set, evaluate; print what was done and where."""
    console = Console()
    console.rule("cleandift-deploy demo: tiny model, ONNX Runtime on the CPU")
    loaded = random_unet("tiny", seed=0)
    onnx_path = MODEL
    started = time.perf_counter()
    manifest = export_demo_model(loaded)
    console.print(
        f"1. exported {onnx_path} ({onnx_path.stat().st_size / 1e6:.1f} MB, "
        f"taps {', '.join(TAPS)}, uint8 {SIZE}x{SIZE} images in) "
        f"in {time.perf_counter() - started:.1f} s"
    )
    photos = OUT / "photos"
    make_synthetic(photos, PAIRS, seed=0, max_side=PHOTO_SIDE)
    console.print(
        f"2. wrote a known-truth set in SPair-71k's layout to {photos} (scikit-image photographs "
        f"and random homography + photometric warps; pairs {PAIRS}); the same as\n"
        f"   cleandift-deploy eval make-synthetic --out {photos} --pairs 12 --train-pairs 4 "
        f"--val-pairs 2 --max-side {PHOTO_SIDE}"
    )
    pair = load_pairs(photos, "spair", "test", limit=1)[0]
    images = [
        Image.open(pair.source_path).convert("RGB"),
        Image.open(pair.target_path).convert("RGB"),
    ]
    extractor = FeatureExtractor.load(onnx_path, backend="onnxruntime")
    reference = FeatureExtractor.from_source(loaded, taps=TAPS, image_size=(SIZE, SIZE))
    ours, theirs = extractor(images), reference(images)
    agreement = compare_outputs(
        {k: v.numpy() for k, v in theirs.items()}, {k: v.numpy() for k, v in ours.items()}
    )
    console.print(f"3. ran {extractor.backend_name} and the PyTorch reference on a photo pair")
    console.print(agreement_table("ONNX Runtime vs PyTorch fp32 (photo pair)", agreement))
    results = OUT / "eval"
    command = [
        "eval", "pck", "--data", str(photos), "--dataset", "spair", "--model", str(onnx_path),
        "--out", str(results),
    ]  # fmt: skip
    console.print(f"4. cleandift-deploy {' '.join(command)}")
    cli.main(args=command, prog_name="cleandift-deploy", standalone_mode=False)
    scores = json.loads((results / "results.json").read_text())["pck"]
    summary = ", ".join(f"@{a} {100 * v['per_image']:.1f}" for a, v in scores.items())
    console.print(
        f"   PCK per image (alpha x target bbox): {summary} "
        "(random weights: this shows the pipeline, not feature quality)"
    )
    matches = draw_pair(pair, images, ours["us6"], extractor.backend_name)
    panels = draw_pca(pair, images, ours["us6"])
    console.print(
        f"pictures: {matches} (the photo pair matched), {results / 'pictures'} (5 best, 5 worst "
        f"pairs), {results / 'results.md'}, {panels[0]}, {panels[1]}"
    )
    recorded = manifest.agreement.get("taps", {})
    console.print(
        "export-time agreement: "
        + ", ".join(f"{tap} min cosine {a['cosine_min']:.7f}" for tap, a in recorded.items())
    )
    console.print(
        f"next: `make page` serves this model with the correspondence page at "
        f"http://127.0.0.1:{PAGE_PORT}/ (click a point, see its match and heatmap)"
    )


if __name__ == "__main__":
    if sys.argv[1:] == ["page"]:
        page()
    else:
        main()
