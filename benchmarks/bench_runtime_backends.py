"""PyTorch fp32 vs PyTorch bf16 autocast on the CPU: speed and agreement, same inputs, one process.

The full-size architecture (random weights: none can be downloaded here) runs the us6 graph through
`FeatureExtractor.from_source` at each size on a pair of images (nearest-neighbour matches go from
the first to the second); each backend is warmed up once, then timed over
repeats (median). Agreement of bf16 against fp32 uses the exporter's own measures (per-position
cosine, relative L2, max abs, nearest-neighbour match agreement) on fresh random images, and is
judged against the exporter's fp16 thresholds: bf16 may only stand in for a reduced-precision
artifact if it meets them. Pass `--onnx` to time an exported graph with ONNX Runtime beside them.

    flock /tmp/cpu-heavy.lock python benchmarks/bench_runtime_backends.py --sizes 512 768
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from harness.results import machine_folder
from PIL import Image
from rich.progress import Progress

from cleandift_deploy.export.agreement import THRESHOLDS, tap_agreement
from cleandift_deploy.models import random_unet
from cleandift_deploy.runtime.extractor import FeatureExtractor

RESULTS = machine_folder()  # benchmarks/results/<machine-id>/
NAME = "runtime_backends"


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


def timed(extractor: FeatureExtractor, images: list[np.ndarray], repeats: int) -> dict[str, object]:
    """Warm-up run, then `repeats` timed runs; the features of the last run."""
    extractor(images)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        features = extractor(images)
        seconds.append(time.perf_counter() - started)
    return {"median_s": statistics.median(seconds), "runs_s": seconds, "features": features}


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sd21")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 768])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--onnx", type=Path, default=None, help="also time this artifact in ORT")
    args = parser.parse_args()

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
            reference = runs["fp32"]["features"]["us6"].numpy()  # type: ignore[index]
            bf16 = runs["bf16"]["features"]["us6"].numpy()  # type: ignore[index]
            measured = tap_agreement(reference, bf16)
            row = {
                "size": size,
                "seconds": {name: run["median_s"] for name, run in runs.items()},
                "runs_s": {name: run["runs_s"] for name, run in runs.items()},
                "speedup_bf16_vs_fp32": runs["fp32"]["median_s"] / runs["bf16"]["median_s"],  # type: ignore[operator]
                "bf16_vs_fp32": measured.__dict__,
                "bf16_meets_fp16_thresholds": not measured.failures("fp16"),
                "bf16_meets_fp32_thresholds": not measured.failures("fp32"),
            }
            rows.append(row)
            progress.advance(task)
    report = {
        "arch": args.arch,
        "weights": f"random, seed {args.seed}",
        "tap": "us6",
        "batch": 2,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "thresholds": THRESHOLDS,
        "peak_rss_gb": peak_rss_gb(),
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{NAME}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{NAME}.md").write_text(markdown(report))
    plot(report, RESULTS / f"{NAME}.png")
    print(markdown(report))


def markdown(report: dict[str, Any]) -> str:
    """A short table of the report."""
    lines = [
        f"# PyTorch fp32 vs bf16 autocast on the CPU ({report['arch']}, us6, batch 2 (a pair), "
        f"{report['weights']} weights, {report['threads']} threads, median of "
        f"{report['repeats']})",
        "",
        "| size | fp32 s | bf16 s | speed-up | cosine mean | cosine min | rel. L2 | NN match |"
        " meets fp16 bar |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        a = row["bf16_vs_fp32"]
        lines.append(
            f"| {row['size']} | {row['seconds']['fp32']:.2f} | {row['seconds']['bf16']:.2f} | "
            f"{row['speedup_bf16_vs_fp32']:.2f}x | {a['cosine_mean']:.5f} | "
            f"{a['cosine_min']:.4f} | {a['relative_l2']:.4f} | {a['match_agreement']:.3f} | "
            f"{'yes' if row['bf16_meets_fp16_thresholds'] else 'no'} |"
        )
    lines += [
        "",
        f"Peak resident memory of the process: {report['peak_rss_gb']:.1f} GB. Both precisions ran",
        "in one process on the same images; the machine may be shared, so compare the ratios, not",
        "the absolute seconds. The fp16 bar is the exporter's (cosine mean >= 0.999 and",
        ">= 99% of nearest-neighbour matches unchanged).",
        "",
    ]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Seconds per pair for each precision, and bf16's agreement against the fp16 bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [row["size"] for row in report["rows"]]
    positions = np.arange(len(sizes))
    figure, (speed, agree) = plt.subplots(1, 2, figsize=(9, 3.6))
    for offset, name in ((-0.2, "fp32"), (0.2, "bf16")):
        seconds = [row["seconds"][name] for row in report["rows"]]
        speed.bar(positions + offset, seconds, width=0.4, label=f"torch {name}")
    speed.set_xticks(positions, [f"{s} px" for s in sizes])
    speed.set_ylabel("seconds per pair (median)")
    speed.set_title(f"{report['arch']} us6, CPU ({report['threads']} threads)")
    speed.legend()
    matches = [row["bf16_vs_fp32"]["match_agreement"] for row in report["rows"]]
    cosines = [row["bf16_vs_fp32"]["cosine_mean"] for row in report["rows"]]
    agree.plot(sizes, matches, "o-", label="NN matches unchanged")
    agree.plot(sizes, cosines, "s-", label="cosine mean")
    agree.axhline(
        report["thresholds"]["fp16"]["match_agreement"],
        color="grey",
        ls="--",
        label="fp16 bar (matches)",
    )
    agree.set_ylim(0.85, 1.005)
    agree.set_xlabel("image size (px)")
    agree.set_title("bf16 vs fp32 agreement")
    agree.legend(loc="lower left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


if __name__ == "__main__":
    main()
