"""DINOv2 and SD + DINOv2 fusion on the CPU: speed, agreement, cost per stage, PCK side by side.

Three parts, in one process, random weights (none can be downloaded here):

- `dino`: DINOv2-B/14 at 840 px (letterboxed, 60 x 60 tokens): the exported fp32 graph in ONNX
  Runtime vs the PyTorch reference it was traced from (median seconds per image, agreement on
  a pair: cosine, relative L2, nearest-neighbour matches), and the fp16 graph's agreement;
- `fusion`: the GeoAware preset end to end through `FusionExtractor` (SD artifact + DINOv2
  artifact, ONNX Runtime), seconds per stage (SD, DINOv2, descriptor + matching);
- `pck`: every preset on the synthetic SPair-layout set, through the exported tiny artifacts and
  through their PyTorch references: PCK side by side and how many predicted points agree
  (random weights: this checks plumbing and agreement, not quality).

    flock /tmp/cpu-heavy.lock python benchmarks/bench_dinov2.py

Results: benchmarks/results/<machine-id>/dinov2.{json,md} (benchmarks/harness); a run of some
parts keeps the other parts of this machine's last run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from harness.memory import process_peak_gib
from harness.run import Benchmark
from harness.timing import Protocol, Timing, measure
from PIL import Image
from rich.progress import Progress

from cleandift_deploy.eval.datasets import load_pairs
from cleandift_deploy.eval.photoset import make_synthetic
from cleandift_deploy.eval.protocol import MethodOptions
from cleandift_deploy.eval.scoring import evaluate
from cleandift_deploy.export import ExportOptions, export_onnx
from cleandift_deploy.export.agreement import tap_agreement
from cleandift_deploy.export.dinov2_export import DinoExportOptions, export_dinov2
from cleandift_deploy.methods.catalog import PRESETS
from cleandift_deploy.methods.registry import build_method
from cleandift_deploy.models import random_unet
from cleandift_deploy.models.dinov2 import random_dino
from cleandift_deploy.runtime.extractor import FeatureExtractor
from cleandift_deploy.runtime.fusion import FusionExtractor

NAME = "dinov2"
SD_TAPS = ("us2", "us5", "us6", "us8")


def random_images(count: int, size: tuple[int, int], seed: int) -> list[np.ndarray]:
    """Smooth random colour fields plus noise (image-like statistics), `size` = (H, W)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        coarse = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
        smooth = Image.fromarray(coarse).resize((size[1], size[0]), Image.Resampling.BICUBIC)
        noise = rng.integers(-16, 17, (size[0], size[1], 3))
        images.append(np.clip(np.asarray(smooth) + noise, 0, 255).astype(np.uint8))
    return images


def timed(run: Any, repeats: int) -> tuple[Timing, Any]:
    """The harness's protocol (one warm-up call, `repeats` timed calls) and the last result."""
    result: list[Any] = [None]
    timing = measure(lambda: result.__setitem__(0, run()), Protocol(warmup=1, repeats=repeats))
    return timing, result[0]


def dino_part(folder: Path, arch: str, size: int, repeats: int, seed: int) -> dict[str, Any]:
    """ONNX Runtime vs PyTorch for one DINOv2 size at `size` px."""
    loaded = random_dino(arch, seed)
    graphs = {}
    for precision in ("fp32", "fp16"):
        started = time.perf_counter()
        path = folder / f"{arch}-{precision}.onnx"
        options = DinoExportOptions(image_size=(size, size), precision=precision)
        manifest = export_dinov2(loaded, path, options)
        graphs[precision] = {"path": path, "export_s": time.perf_counter() - started}
        graphs[precision]["recorded"] = manifest.agreement["taps"]["dino"]
    images = random_images(2, (480, 640), seed)
    single = images[:1]
    ort = FeatureExtractor.load(graphs["fp32"]["path"], "onnxruntime")
    ort_timing, _ = timed(lambda: ort(single), repeats)
    rss_ort = process_peak_gib()
    reference = FeatureExtractor.load(graphs["fp32"]["path"], "torch")
    torch_timing, _ = timed(lambda: reference(single), repeats)
    ort_s, torch_s = ort_timing.median, torch_timing.median
    expected = reference(images)["dino"].numpy()
    found = ort(images)["dino"].numpy()
    fp16 = FeatureExtractor.load(graphs["fp16"]["path"], "onnxruntime")(images)["dino"].numpy()
    return {
        "arch": arch,
        "size": size,
        "tokens": list(expected.shape[1:]),
        "seconds_per_image": {"onnxruntime": ort_s, "torch": torch_s},
        "timing": {"onnxruntime": ort_timing.to_dict(), "torch": torch_timing.to_dict()},
        "speedup_ort_vs_torch": torch_s / ort_s,
        "fp32_vs_torch": vars(tap_agreement(expected, found)),
        "fp16_vs_torch": vars(tap_agreement(expected, fp16)),
        "export_s": {p: round(g["export_s"], 1) for p, g in graphs.items()},
        "peak_rss_gb_after_ort": rss_ort,
    }


def fusion_part(
    folder: Path, dino_path: Path, sd_arch: str, sd_size: int, repeats: int, seed: int
) -> dict[str, Any]:
    """GeoAware end to end through both artifacts: seconds per stage for one pair."""
    sd_path = folder / f"{sd_arch}-taps.onnx"
    options = ExportOptions(
        taps=("us2", "us5", "us8"), image_size=(sd_size, sd_size), check_agreement=False
    )
    export_onnx(random_unet(sd_arch, seed), sd_path, options)
    fusion = FusionExtractor.load(PRESETS["geoaware"], sd_path, dino_path)
    source, target = random_images(2, (480, 640), seed + 1)
    points = torch.tensor([[100.0, 200.0], [320.0, 240.0], [600.0, 50.0]])
    stages: dict[str, list[float]] = {"sd": [], "dino": [], "descriptor": [], "match": []}
    fusion.match(fusion.describe_images(source, target), points)
    for _ in range(repeats):
        pair = fusion.describe_images(source, target)
        started = time.perf_counter()
        fusion.match(pair, points)
        for stage in ("sd", "dino", "descriptor"):
            stages[stage].append(pair.seconds[stage])
        stages["match"].append(time.perf_counter() - started)
    return {
        "preset": "geoaware",
        "sd_arch": sd_arch,
        "sd_size": list(fusion.sd.image_size),
        "dino_size": list(fusion.dino.image_size) if fusion.dino is not None else None,
        "descriptor_channels": int(pair.source.shape[0]),
        "seconds_per_pair": {k: statistics.median(v) for k, v in stages.items()},
        "timing": {k: Timing.from_samples(v, warmup=1).to_dict() for k, v in stages.items()},
    }


def pck_part(folder: Path, pairs: int, seed: int) -> dict[str, Any]:
    """Every preset through the tiny artifacts and their PyTorch references."""
    data = folder / "synthetic"
    make_synthetic(data, {"test": pairs}, seed)
    samples = load_pairs(data, "spair", "test")
    sd, dino = folder / "tiny-sd.onnx", folder / "tiny-dino.onnx"
    sd_options = ExportOptions(taps=SD_TAPS, image_size=(128, 128), check_agreement=False)
    export_onnx(random_unet("tiny", seed), sd, sd_options)
    export_dinov2(random_dino("dinov2_tiny", seed), dino, DinoExportOptions(image_size=(84, 84)))
    rows = []
    for preset in PRESETS:
        found = {}
        for backend in ("onnxruntime", "torch"):
            options = MethodOptions(model=sd, dino=dino, backend=backend, descriptor=preset)
            method = build_method("descriptor", options)
            evaluation = evaluate(method, samples, (0.05, 0.1), "bbox", show_progress=False)
            found[backend] = evaluation
        same = [
            np.abs(a - b).max(axis=1) <= 0.5
            for a, b in zip(
                found["onnxruntime"].predictions, found["torch"].predictions, strict=True
            )
        ]
        rows.append(
            {
                "preset": preset,
                "pck_0.1_per_point": {b: e.pck["0.1"]["per_point"] for b, e in found.items()},
                "pck_0.05_per_point": {b: e.pck["0.05"]["per_point"] for b, e in found.items()},
                "points_agreeing": float(np.concatenate(same).mean()),
                "points": int(sum(len(s) for s in same)),
            }
        )
    return {"pairs": len(samples), "models": "tiny SD + dinov2_tiny, random", "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["dino", "fusion", "pck"])
    parser.add_argument("--arch", default="dinov2_vitb14")
    parser.add_argument("--size", type=int, default=840)
    parser.add_argument("--sd-arch", default="sd15")
    parser.add_argument("--sd-size", type=int, default=960)
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fusion-repeats", type=int, default=1, help="pairs are slow at 960 px")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    bench = Benchmark(NAME, "DINOv2 and SD + DINOv2 fusion")
    report: dict[str, Any] = {
        "threads": torch.get_num_threads(),
        "weights": f"random, seed {args.seed}",
        "repeats": args.repeats,
        "fusion_repeats": args.fusion_repeats,
    }
    with tempfile.TemporaryDirectory(prefix="bench-dinov2-") as temporary, Progress() as progress:
        folder = Path(temporary)
        task = progress.add_task("parts", total=len(args.parts))
        if "dino" in args.parts:
            report["dino"] = dino_part(folder, args.arch, args.size, args.repeats, args.seed)
            progress.advance(task)
        if "fusion" in args.parts:
            dino_path = folder / f"{args.arch}-fp32.onnx"
            if not dino_path.is_file():
                options = DinoExportOptions(image_size=(args.size, args.size))
                export_dinov2(random_dino(args.arch, args.seed), dino_path, options)
            report["fusion"] = fusion_part(
                folder, dino_path, args.sd_arch, args.sd_size, args.fusion_repeats, args.seed
            )
            progress.advance(task)
        if "pck" in args.parts:
            report["pck"] = pck_part(folder, args.pairs, args.seed)
            progress.advance(task)
    report["peak_rss_gb"] = process_peak_gib()
    previous = bench.path("json")
    if previous.is_file():  # a partial run keeps the other parts of this machine's last run
        report = {**json.loads(previous.read_text()).get("results", {}), **report}
    bench.results = report
    write_report(bench, report)
    for path in bench.write():
        print(f"wrote {path}")


def write_report(bench: Benchmark, report: dict[str, Any]) -> None:
    """Figures and tables of every part in the report."""
    if "dino" in report:
        d = report["dino"]
        s = d["seconds_per_image"]
        for backend, found in d.get("timing", {}).items():
            bench.timing_figure(
                f"dino {backend}", Timing.from_dict(found), label=f"{d['arch']} {backend} / image"
            )
        bench.figure("dino speedup", d["speedup_ort_vs_torch"], "x", better="higher")
        rows: list[list[Any]] = [["torch fp32 (reference)", s["torch"], "1.00x", "", "", "", ""]]
        for name, key, secs in (
            ("ONNX Runtime fp32", "fp32_vs_torch", s["onnxruntime"]),
            ("ONNX Runtime fp16 graph", "fp16_vs_torch", None),
        ):
            a = d[key]
            rows.append(
                [
                    name,
                    secs,
                    None if secs is None else f"{s['torch'] / secs:.2f}x",
                    f"{a['cosine_mean']:.7f}",
                    f"{a['cosine_min']:.7f}",
                    f"{a['relative_l2']:.2e}",
                    f"{a['match_agreement']:.3f}",
                ]
            )
        bench.table(
            f"{d['arch']} at {d['size']} px ({d['tokens'][1]}x{d['tokens'][2]} tokens), one image",
            ["backend", "s / image", "vs torch", "cos mean", "cos min", "rel. L2", "NN match"],
            rows,
        )
        bench.note(f"DINOv2 export seconds: {d['export_s']}.")
    if "fusion" in report:
        f = report["fusion"]
        st = f["seconds_per_pair"]
        total = sum(st.values())
        for stage, found in f.get("timing", {}).items():
            label = f"GeoAware {stage} / pair"
            bench.timing_figure(f"fusion {stage}", Timing.from_dict(found), label=label)
        bench.table(
            f"GeoAware end to end, one pair ({f['sd_arch']} at {f['sd_size'][0]} px letterboxed + "
            f"DINOv2 at {f['dino_size'][0]} px, ONNX Runtime; {f['descriptor_channels']}-d "
            f"descriptors; median of {report['fusion_repeats']} after a warm-up pair)",
            ["stage", "s / pair", "share"],
            [[k, v, f"{v / total:.0%}"] for k, v in st.items()],
        )
    if "pck" in report:
        p = report["pck"]
        rows = []
        for row in p["rows"]:
            a, b = row["pck_0.1_per_point"], row["pck_0.05_per_point"]
            rows.append(
                [
                    row["preset"],
                    a["torch"],
                    a["onnxruntime"],
                    b["torch"],
                    b["onnxruntime"],
                    f"{row['points_agreeing']:.1%} of {row['points']}",
                ]
            )
        bench.table(
            f"PCK per preset, PyTorch reference vs exported artifacts ({p['pairs']} synthetic "
            f"pairs, {p['models']}: plumbing and agreement, not quality)",
            [
                "preset",
                "PCK@0.1 torch",
                "PCK@0.1 ONNX",
                "PCK@0.05 torch",
                "PCK@0.05 ONNX",
                "points agreeing",
            ],
            rows,
        )
    bench.figure("peak rss", report["peak_rss_gb"], "GiB", label="peak RSS of the process")
    bench.note(
        f"{report['threads']} threads, {report['weights']} weights. Everything ran in one "
        "process on the same inputs."
    )


if __name__ == "__main__":
    main()
