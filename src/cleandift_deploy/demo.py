"""`make demo`: the main job on the embedded default, end to end on the CPU.

The tiny architecture with random weights (no weights can be downloaded here) is exported to ONNX,
run in ONNX Runtime, checked against the PyTorch reference, and used to match a synthetic image
pair with known correspondences. Outputs land in `demo-out/`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from .eval import pck, visible_points, warped_pair
from .eval.draw import draw_matches
from .export import ExportOptions, export_onnx
from .export.agreement import compare_outputs
from .export.commands import agreement_table
from .kernels import match_points
from .models import random_unet
from .runtime.extractor import FeatureExtractor
from .runtime.pca import save_pca_picture

OUT = Path("demo-out")
SIZE = 256
TAPS = ("us3", "us6")


def main() -> None:
    """Export, run, compare and match; print what was done and where the pictures are."""
    console = Console()
    console.rule("cleandift-deploy demo: tiny model, ONNX Runtime on the CPU")
    loaded = random_unet("tiny", seed=0)
    onnx_path = OUT / "tiny_us3_us6.onnx"
    started = time.perf_counter()
    options = ExportOptions(taps=TAPS, image_size=(SIZE, SIZE), random_init=True, force=True)
    manifest = export_onnx(loaded, onnx_path, options)
    console.print(
        f"1. exported {onnx_path} ({onnx_path.stat().st_size / 1e6:.1f} MB, "
        f"taps {', '.join(TAPS)}, uint8 {SIZE}x{SIZE} images in) "
        f"in {time.perf_counter() - started:.1f} s"
    )
    extractor = FeatureExtractor.load(onnx_path, backend="onnxruntime")
    reference = FeatureExtractor.from_source(loaded, taps=TAPS, image_size=(SIZE, SIZE))
    pair = warped_pair(SIZE, angle_deg=12.0, scale=1.1, seed=0)
    images = [pair.source, pair.target]
    ours, theirs = extractor(images), reference(images)
    console.print(f"2. ran {extractor.backend_name} and the PyTorch reference on an image pair")
    agreement = compare_outputs(
        {k: v.numpy() for k, v in theirs.items()}, {k: v.numpy() for k, v in ours.items()}
    )
    console.print(agreement_table("ONNX Runtime vs PyTorch fp32 (real image pair)", agreement))
    points = visible_points(pair, 60, seed=1)
    matched, scores = match_points(
        ours["us6"][0], ours["us6"][1], torch.from_numpy(points), (SIZE, SIZE), (SIZE, SIZE)
    )
    truth = pair.map_points(points)
    predicted = matched.numpy()
    correct = np.linalg.norm(predicted - truth, axis=1) <= 0.1 * SIZE
    console.print(
        f"3. matched {len(points)} points on us6 (exact bilinear upsampling, no upsampled map): "
        f"PCK@0.1 = {pck(predicted, truth, 0.1 * SIZE):.2f}, mean score {scores.mean():.3f} "
        "(random weights: this shows the pipeline, not feature quality)"
    )
    draw_matches(pair.source, pair.target, points, predicted, OUT / "matches.png", correct)
    save_pca_picture(ours["us6"][0], OUT / "pca_us6_source.png", (SIZE, SIZE))
    save_pca_picture(ours["us6"][1], OUT / "pca_us6_target.png", (SIZE, SIZE))
    recorded = manifest.agreement.get("taps", {})
    summary = ", ".join(f"{tap} min cosine {a['cosine_min']:.7f}" for tap, a in recorded.items())
    console.print(
        f"4. export-time agreement recorded in {onnx_path.with_suffix('.json')}: {summary}"
    )
    console.print(
        f"pictures: {OUT / 'matches.png'}, {OUT / 'pca_us6_source.png'}, "
        f"{OUT / 'pca_us6_target.png'}"
    )


if __name__ == "__main__":
    main()
