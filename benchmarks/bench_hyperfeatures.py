"""Diffusion Hyperfeatures on the CPU: training speed and the exported one-step graph's speed.

1. Training steps per second, one pair per step, one-step variant, in one run:
   - `cached`: every image's UNet maps computed once into the feature cache (a one-off cost,
     reported), each step reads two images' maps and trains the aggregation network;
   - `unet-in-loop`: the reference's way, the VAE and the UNet run for both images at every step
     (the same code with a cache that keeps nothing).
   The two cases run back to back on the same pairs (a training run cannot be interleaved);
   medians of per-step times, the first step of each dropped.
2. The exported one-step graph (image uint8 -> VAE mean -> UNet taps -> aggregation, fp32) in ONNX
   Runtime (the runtime's tuned session) vs the same module in PyTorch eager, batch 1, interleaved
   repeats, medians, agreement (min cosine per position) and the graph's export time.

Random weights (tiny and/or the SD 1.5 architecture at 512 px):

    flock /tmp/cpu-heavy.lock .venv/bin/python benchmarks/bench_hyperfeatures.py --arch tiny sd15

Results: benchmarks/results/<machine-id>/hyperfeatures.{json,md} (benchmarks/harness: per-step
times as harness timings, the export comparison with its interleaved protocol); a run of some
architectures keeps this machine's others.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from harness.run import Benchmark
from harness.timing import Protocol, Timing, measure_interleaved

NAME = "hyperfeatures"
SIZES = {"tiny": 64, "sd15": 512}


def _pairs(folder: Path, count: int) -> list[Any]:
    from cleandift_deploy.eval.datasets import load_pairs
    from cleandift_deploy.eval.photoset import make_synthetic

    make_synthetic(folder, {"trn": count})
    return load_pairs(folder, "spair", "trn")


def _step_times(store: Any, pairs: list[Any], steps: int, channels: tuple[int, ...]) -> list[float]:
    """Seconds of each training step over `store` (cache or UNet in the loop)."""
    from cleandift_deploy.methods.hyperfeatures.aggregation import AggregationNetwork
    from cleandift_deploy.methods.hyperfeatures.train import (
        HyperTrainSettings,
        make_optimizer,
        train_steps,
    )

    torch.manual_seed(0)
    network = AggregationNetwork(channels, 1)
    settings = HyperTrainSettings(steps=steps, save_every=steps + 1)
    stamps = [time.perf_counter()]
    train_steps(
        network,
        make_optimizer(network, settings),
        store,
        pairs,
        settings,
        [],
        lambda _step, _loss: stamps.append(time.perf_counter()),
        lambda _step: None,
    )
    return [b - a for a, b in itertools.pairwise(stamps)]


def bench_training(arch: str, steps: int, loop_steps: int, work: Path) -> dict[str, Any]:
    """Steps per second with cached maps vs the UNet in the loop."""
    from cleandift_deploy.eval.cache import FeatureCache
    from cleandift_deploy.methods.hyperfeatures.extract import ExtractSettings, UNetMaps
    from cleandift_deploy.methods.hyperfeatures.train import MapStore
    from cleandift_deploy.models import random_unet

    pairs = _pairs(work / f"pairs-{arch}", 4)
    extractor = UNetMaps(random_unet(arch, seed=0), ExtractSettings(image_size=SIZES[arch]))
    cached = MapStore(extractor, FeatureCache(work / f"cache-{arch}", memory_items=0))
    started = time.perf_counter()
    cached.fill(pairs, lambda _done, _total: None)
    fill = time.perf_counter() - started
    images = len({p for pair in pairs for p in (pair.source_path, pair.target_path)})
    in_loop = MapStore(extractor, FeatureCache(None, memory_items=0))
    fast = Timing.from_samples(_step_times(cached, pairs, steps, extractor.channels)[1:], 1)
    slow = Timing.from_samples(_step_times(in_loop, pairs, loop_steps, extractor.channels)[1:], 1)
    cached_s, loop_s = fast.median, slow.median
    return {
        "arch": arch,
        "image_size": SIZES[arch],
        "cached_steps": len(fast.samples) + 1,
        "unet_in_loop_steps": len(slow.samples) + 1,
        "cached_timing": fast.to_dict(),
        "unet_in_loop_timing": slow.to_dict(),
        "cached_step_s": cached_s,
        "unet_in_loop_step_s": loop_s,
        "cached_steps_per_s": 1 / cached_s,
        "unet_in_loop_steps_per_s": 1 / loop_s,
        "speedup": loop_s / cached_s,
        "cache_fill_s": fill,
        "cache_fill_images": images,
        "note": "memory_items=0: every cached step reads both images' maps from disk",
    }


def _checkpoint(arch: str, work: Path) -> tuple[Path, Any]:
    from cleandift_deploy.methods.hyperfeatures.aggregation import AggregationNetwork
    from cleandift_deploy.methods.hyperfeatures.checkpoint import AggregatorInfo, save_aggregator
    from cleandift_deploy.methods.hyperfeatures.extract import layer_channels
    from cleandift_deploy.models import random_unet

    loaded = random_unet(arch, seed=0)
    channels = layer_channels(loaded.unet.config)
    torch.manual_seed(1)
    network = AggregationNetwork(channels, 1)
    with torch.no_grad():
        network.mixing_weights.normal_()
    info = AggregatorInfo(
        channels, (-1.0,), "one-step", 384, arch, loaded.source, loaded.checkpoint_sha256,
        "mean", SIZES[arch], 0,
    )  # fmt: skip
    path = work / f"aggregator-{arch}.safetensors"
    save_aggregator(path, network, info)
    return path, loaded


def bench_export(arch: str, repeats: int, work: Path) -> dict[str, Any]:
    """ONNX Runtime vs PyTorch eager on the exported one-step graph, batch 1."""
    from cleandift_deploy.export.exporter import export_onnx
    from cleandift_deploy.methods.hyperfeatures.checkpoint import load_aggregator
    from cleandift_deploy.methods.hyperfeatures.graph import OUTPUT, hyperfeature_spec
    from cleandift_deploy.models.graph_options import ExportOptions
    from cleandift_deploy.runtime.ort_session import create_session

    path, loaded = _checkpoint(arch, work)
    network, info = load_aggregator(path)
    size = SIZES[arch]
    options = ExportOptions(image_size=(size, size), check_agreement=False, force=True)
    spec = hyperfeature_spec(loaded, network, info, options, path)
    graph = work / f"hf-{arch}.onnx"
    started = time.perf_counter()
    export_onnx(loaded, graph, options, spec)
    export_s = time.perf_counter() - started
    session = create_session(graph)
    module = spec.module
    image = np.random.default_rng(0).integers(0, 256, (1, 3, size, size), dtype=np.uint8)

    def run_torch() -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(image))[0].numpy()

    def run_ort() -> np.ndarray:
        return session.run([OUTPUT], {"image": image})[0]

    outputs = {"torch": run_torch(), "onnxruntime": run_ort()}  # the warm-up
    timings = measure_interleaved(
        {"torch": run_torch, "onnxruntime": run_ort}, Protocol(warmup=0, repeats=repeats)
    )
    ref, got = (outputs[c][0].reshape(384, -1).T.astype(np.float64) for c in timings)
    cosine = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    torch_s, ort_s = (timings[c].median for c in ("torch", "onnxruntime"))
    return {
        "arch": arch,
        "image_size": size,
        "output": list(outputs["onnxruntime"].shape),
        "export_s": export_s,
        "onnx_mb": sum(p.stat().st_size for p in work.glob(f"hf-{arch}.onnx*")) / 1e6,
        "torch_s": torch_s,
        "onnxruntime_s": ort_s,
        "speedup": torch_s / ort_s,
        "repeats": repeats,
        "timing": {c: t.to_dict() for c, t in timings.items()},
        "cosine_min": float(cosine.min()),
    }


def write(bench: Benchmark, results: dict[str, Any]) -> None:
    """Figures and tables of every architecture measured on this machine, then the files."""
    bench.figures, bench.tables, bench.notes = [], [], []
    rows = []
    for r in results["training"]:
        for key in ("cached", "unet_in_loop"):
            if f"{key}_timing" in r:
                label = f"{r['arch']} {key.replace('_', ' ')} training step"
                timing = Timing.from_dict(r[f"{key}_timing"])
                bench.timing_figure(f"{r['arch']} {key} step", timing, label=label)
        rows.append(
            [
                r["arch"],
                r["image_size"],
                r["threads"],
                f"{r['cached_step_s']:.3f} ({r['cached_steps_per_s']:.2f}/s)",
                f"{r['unet_in_loop_step_s']:.3f} ({r['unet_in_loop_steps_per_s']:.3f}/s)",
                f"{r['speedup']:.1f}x",
                f"{r['cache_fill_s']:.1f} s for {r['cache_fill_images']} images",
            ]
        )
    bench.table(
        "Training steps per second (one-step variant, one pair per step)",
        [
            "arch",
            "px",
            "threads",
            "cached (s/step)",
            "UNet in the loop (s/step)",
            "speed-up",
            "cache fill",
        ],
        rows,
    )
    rows = []
    for r in results["export"]:
        for case, found in r.get("timing", {}).items():
            label = f"{r['arch']} exported graph, {case}"
            bench.timing_figure(f"{r['arch']} graph {case}", Timing.from_dict(found), label=label)
        rows.append(
            [
                r["arch"],
                r["image_size"],
                r["threads"],
                "x".join(map(str, r["output"])),
                f"{r['export_s']:.0f} s, {r['onnx_mb']:.0f} MB",
                f"{r['torch_s']:.3f} s",
                f"{r['onnxruntime_s']:.3f} s",
                f"{r['speedup']:.2f}x",
                f"{r['cosine_min']:.7f}",
            ]
        )
    bench.table(
        "Exported one-step graph (fp32, batch 1) vs PyTorch eager",
        [
            "arch",
            "px",
            "threads",
            "output",
            "export",
            "PyTorch",
            "ONNX Runtime",
            "speed-up",
            "min cosine",
        ],
        rows,
    )
    bench.note("Random weights; cached steps read both images' maps from disk (memory_items=0).")
    bench.results = results
    for path in bench.write():
        print(f"wrote {path}")


def previous(path: Path, archs: list[str]) -> dict[str, Any]:
    """This machine's earlier results of other architectures (each run replaces its own), so a
    light run and a heavy one can be made at different times."""
    found = json.loads(path.read_text())["results"] if path.is_file() else {}
    kept = {
        part: [r for r in found.get(part, []) if r["arch"] not in archs]
        for part in ("training", "export")
    }
    done = [a for a in found.get("archs", []) if a not in archs]
    return {**kept, "archs": done + archs}


def main() -> None:
    """Run the chosen architectures and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=["tiny", "sd15"], choices=list(SIZES))
    parser.add_argument("--steps", type=int, default=30, help="Cached training steps.")
    parser.add_argument("--loop-steps", type=int, default=6, help="UNet-in-the-loop steps.")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's).")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bench = Benchmark(NAME, "Diffusion Hyperfeatures training and export")
    results = previous(bench.path("json"), args.arch)
    with tempfile.TemporaryDirectory(dir=args.workdir) as folder:
        work = Path(folder)
        for arch in args.arch:
            loop = args.loop_steps if arch != "tiny" else args.steps
            threads = {"threads": torch.get_num_threads()}
            results["training"].append({**bench_training(arch, args.steps, loop, work), **threads})
            print(json.dumps(results["training"][-1]), flush=True)
            results["export"].append({**bench_export(arch, args.repeats, work), **threads})
            print(json.dumps(results["export"][-1]), flush=True)
            write(bench, results)


if __name__ == "__main__":
    main()
