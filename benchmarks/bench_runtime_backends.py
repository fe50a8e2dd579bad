"""PyTorch fp32 vs PyTorch bf16 autocast on the CPU: speed and agreement, same inputs, one process.

The full-size architecture (random weights: none can be downloaded here) runs the us6 graph through
`FeatureExtractor.from_source` at each size on a pair of images (nearest-neighbour matches go from
the first to the second); each backend is warmed up once, then timed over repeats (the
harness's protocol). Agreement of bf16 against fp32 uses the exporter's own measures (per-position
cosine, relative L2, max abs, nearest-neighbour match agreement) on fresh random images, and is
judged against the exporter's fp16 thresholds: bf16 may only stand in for a reduced-precision
artifact if it meets them. Pass `--onnx` to time an exported graph with ONNX Runtime beside them.

    flock /tmp/cpu-heavy.lock python benchmarks/bench_runtime_backends.py --sizes 512 768

Results: benchmarks/results/<machine-id>/runtime_backends.{json,md,png} (benchmarks/harness).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from harness.memory import process_peak_gib
from harness.run import Benchmark
from harness.timing import Protocol, measure
from PIL import Image
from rich.progress import Progress

from cleandift_deploy.export.agreement import THRESHOLDS, tap_agreement
from cleandift_deploy.models import random_unet
from cleandift_deploy.runtime.extractor import FeatureExtractor


def random_images(count: int, size: int, seed: int) -> list[np.ndarray]:
    """Smooth random colour fields plus noise: image-like statistics, fresh for every seed."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        coarse = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC))
        noise = rng.integers(-16, 17, smooth.shape)
        images.append(np.clip(smooth.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    return images


def timed(extractor: FeatureExtractor, images: list[np.ndarray], repeats: int) -> dict[str, Any]:
    """The harness's protocol (one warm-up run, `repeats` timed runs); the last run's features."""
    last: list[Any] = []
    timing = measure(
        lambda: last.__setitem__(slice(None), [extractor(images)]), Protocol(1, repeats)
    )
    return {"timing": timing, "features": last[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sd21")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 768])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--onnx", type=Path, default=None, help="also time this artifact in ORT")
    args = parser.parse_args()

    bench = Benchmark("runtime_backends", "PyTorch fp32 vs bf16 autocast on the CPU")
    loaded = random_unet(args.arch, seed=args.seed)
    rows = []
    with Progress() as progress:
        task = progress.add_task("sizes", total=len(args.sizes))
        for size in args.sizes:
            images = random_images(2, size, args.seed + size)
            runs = {}
            for precision in ("fp32", "bf16"):
                extractor = FeatureExtractor.from_source(
                    loaded, image_size=(size, size), precision=precision
                )
                runs[precision] = timed(extractor, images, args.repeats)
            if args.onnx is not None:
                ort = FeatureExtractor.load(args.onnx, image_size=(size, size))
                runs["onnxruntime"] = timed(ort, images, args.repeats)
            for name, run in runs.items():
                bench.timing_figure(
                    f"{size} {name}", run["timing"], label=f"{size} px {name} (pair)"
                )
            reference = runs["fp32"]["features"]["us6"].numpy()
            bf16 = runs["bf16"]["features"]["us6"].numpy()
            measured = tap_agreement(reference, bf16)
            speedup = runs["fp32"]["timing"].median / runs["bf16"]["timing"].median
            bench.figure(f"{size} bf16 speedup", speedup, "x", better="higher")
            rows.append(
                {
                    "size": size,
                    "seconds": {name: run["timing"].median for name, run in runs.items()},
                    "speedup_bf16_vs_fp32": speedup,
                    "bf16_vs_fp32": measured.__dict__,
                    "bf16_meets_fp16_thresholds": not measured.failures("fp16"),
                    "bf16_meets_fp32_thresholds": not measured.failures("fp32"),
                }
            )
            progress.advance(task)
    bench.figure("peak rss", process_peak_gib(), "GiB", label="peak RSS of the process")
    bench.results = {
        "arch": args.arch,
        "weights": f"random, seed {args.seed}",
        "tap": "us6",
        "batch": 2,
        "repeats": args.repeats,
        "thresholds": THRESHOLDS,
        "rows": rows,
    }
    report(bench, rows)
    for path in bench.write():
        print(f"wrote {path}")


def report(bench: Benchmark, rows: list[dict[str, Any]]) -> None:
    """The agreement table and the speed / agreement plots."""
    table = []
    for row in rows:
        a = row["bf16_vs_fp32"]
        table.append(
            [
                row["size"],
                row["seconds"]["fp32"],
                row["seconds"]["bf16"],
                f"{row['speedup_bf16_vs_fp32']:.2f}x",
                f"{a['cosine_mean']:.5f}",
                f"{a['cosine_min']:.4f}",
                f"{a['relative_l2']:.4f}",
                f"{a['match_agreement']:.3f}",
                row["bf16_meets_fp16_thresholds"],
            ]
        )
    bench.table(
        "us6, batch 2 (a pair), seconds per pair (median)",
        [
            "size",
            "fp32 s",
            "bf16 s",
            "speed-up",
            "cosine mean",
            "cosine min",
            "rel. L2",
            "NN match",
            "meets fp16 bar",
        ],
        table,
    )
    bench.note(
        "Both precisions ran in one process on the same images. The fp16 bar is the exporter's "
        "(cosine mean >= 0.999 and >= 99% of nearest-neighbour matches unchanged)."
    )
    bench.line_plot(
        "seconds per pair (median)",
        "image size (px)",
        "seconds",
        {f"torch {n}": [(r["size"], r["seconds"][n]) for r in rows] for n in ("fp32", "bf16")},
    )
    bench.line_plot(
        "bf16 vs fp32 agreement",
        "image size (px)",
        "share / cosine",
        {
            "NN matches unchanged": [
                (r["size"], r["bf16_vs_fp32"]["match_agreement"]) for r in rows
            ],
            "cosine mean": [(r["size"], r["bf16_vs_fp32"]["cosine_mean"]) for r in rows],
            "fp16 bar (matches)": [
                (r["size"], THRESHOLDS["fp16"]["match_agreement"]) for r in rows
            ],
        },
    )


if __name__ == "__main__":
    main()
