"""Probes on the CPU: training on cached features vs the reference procedure, and the fused depth
graph vs features-then-PyTorch-probe, SD 2.1 architecture (random weights) at 768 px.

Cases, each in a fresh subprocess (its own peak memory):
- `train`: CleanDIFT's depth head (1x1 conv 1280 -> 256 bins) on tap us6 of N synthetic images.
  The reference (CleanDIFT `DepthPred.forward`) runs the backbone inside every training step;
  here each image is extracted once into the feature cache (the one-off cost, reported) and an
  epoch only reads the cache and steps the head. Both epochs are timed on the same images, batch
  size and optimiser.
- `export`: the us6 features graph and the graph with the depth probe inside (ONNX, fp32).
- `fused` / `split`: ONNX Runtime latency and peak RSS per image of image -> depth in one graph,
  and of image -> us6 features (ONNX Runtime) -> probe + bilinear upsampling (PyTorch).

    flock /tmp/cpu-heavy.lock .venv/bin/python benchmarks/bench_probes.py
    .venv/bin/python benchmarks/bench_probes.py --quick     # tiny model, 128 px: a dry run

Results: benchmarks/results/<machine-id>/probes[-quick].{json,md} (benchmarks/harness).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.memory import process_peak_gib
from harness.run import Benchmark
from harness.timing import Protocol, Timing, measure

NAME = "probes"
PROMPT = "A photo of a room"


def _extractor(arch: str, size: int) -> Any:
    from cleandift_deploy.runtime.extractor import FeatureExtractor
    from cleandift_deploy.runtime.torch_reference import ReferenceSpec

    spec = ReferenceSpec(taps=("us6",), prompt=PROMPT)
    return FeatureExtractor.from_source(
        arch=arch, random_init=True, seed=0, spec=spec, image_size=(size, size)
    )


def case_train(arch: str, size: int, images: int, batch: int, work: Path) -> dict[str, Any]:
    """Cache fill (one-off), cached epoch and reference epoch on the same images."""
    import torch

    from cleandift_deploy.eval.cache import FeatureCache
    from cleandift_deploy.eval.nyu import load_nyu
    from cleandift_deploy.eval.probe_synthetic import SyntheticCounts, make_probe_synthetic
    from cleandift_deploy.eval.probes import CachedFeatures, CachedProbeData, probe_record
    from cleandift_deploy.models.probe_heads import build_probe, depth_loss
    from cleandift_deploy.train.probes import ProbeTrainSettings, batch_order, probe_loss

    folders = make_probe_synthetic(work / "data", SyntheticCounts(images, 1, 192))
    samples = load_nyu(folders["nyu"], "train")
    extractor = _extractor(arch, size)
    source = CachedFeatures(extractor, "us6", FeatureCache(work / "cache"))
    started = time.perf_counter()
    data = CachedProbeData(source, samples, "depth")
    fill = time.perf_counter() - started
    info = probe_record(source, "depth", "bins", 256)
    probe = build_probe(info)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=5e-4)
    settings = ProbeTrainSettings(batch_size=batch)

    def cached_epoch() -> None:
        for indices in batch_order(len(data), 0, settings):
            features = torch.stack([data.features(i) for i in indices])
            targets = torch.stack([data.target(i) for i in indices])
            loss = probe_loss(probe, info, features, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    pixels = [s.image() for s in samples]
    truths = [torch.from_numpy(s.target())[None] for s in samples]

    def reference_epoch() -> None:  # CleanDIFT DepthPred.forward: backbone in every step
        for indices in batch_order(len(data), 0, settings):
            with torch.no_grad():
                features = extractor([pixels[i] for i in indices])["us6"]
            loss = depth_loss(probe(features), torch.stack([truths[i] for i in indices]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    cached = measure(cached_epoch, Protocol(warmup=1, repeats=5))
    reference = measure(reference_epoch, Protocol(warmup=0, repeats=1))
    return {
        "images": images,
        "batch": batch,
        "cache_fill_s": fill,
        "extractions": source.cache.extractions,
        "cached_epoch": cached.to_dict(),
        "reference_epoch": reference.to_dict(),
        "feature_shape": list(data.features(0).shape),
        "peak_gib": process_peak_gib(),
    }


def case_export(arch: str, size: int, work: Path) -> dict[str, Any]:
    """The features graph and the probe graph (fp32, static size, agreement measured)."""
    from cleandift_deploy.export.exporter import export_onnx
    from cleandift_deploy.models import random_unet
    from cleandift_deploy.models.graph_options import ExportOptions
    from cleandift_deploy.models.probe_graph import probe_spec
    from cleandift_deploy.models.probe_heads import ProbeInfo, build_probe, load_probe, save_probe

    loaded = random_unet(arch, 0)
    channels = 1280 if arch != "tiny" else 64
    info = ProbeInfo(channels=channels)
    save_probe(work / "probe.safetensors", build_probe(info), info)

    def options() -> ExportOptions:
        return ExportOptions(prompt=PROMPT, image_size=(size, size), check_agreement=False)

    started = time.perf_counter()
    export_onnx(loaded, work / "features.onnx", options())
    features_s = time.perf_counter() - started
    started = time.perf_counter()
    spec = probe_spec(loaded, load_probe(work / "probe.safetensors"), options())
    export_onnx(loaded, work / "depth.onnx", options(), spec)
    return {
        "features_export_s": features_s,
        "depth_export_s": time.perf_counter() - started,
        "peak_gib": process_peak_gib(),
    }


def case_run(mode: str, size: int, repeats: int, work: Path) -> dict[str, Any]:
    """Latency per image (ONNX Runtime; the split case adds the PyTorch probe) and peak RSS."""
    import numpy as np
    import torch

    from cleandift_deploy.models.probe_heads import load_probe, upsample
    from cleandift_deploy.runtime.extractor import FeatureExtractor

    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    started = time.perf_counter()
    if mode == "fused":
        graph = FeatureExtractor.load(work / "depth.onnx", backend="onnxruntime")

        def run() -> torch.Tensor:
            return graph([image])["depth"]

    else:
        features = FeatureExtractor.load(work / "features.onnx", backend="onnxruntime")
        probe = load_probe(work / "probe.safetensors").probe

        def run() -> torch.Tensor:
            with torch.inference_mode():
                return upsample(probe(features([image])["us6"]), (size, size))

    session_s = time.perf_counter() - started
    timing = measure(run, Protocol(warmup=1, repeats=repeats))
    return {"timing": timing.to_dict(), "session_s": session_s, "peak_gib": process_peak_gib()}


def _child(args: list[str]) -> dict[str, Any]:
    output = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True
    ).stdout
    return dict(json.loads(output.strip().splitlines()[-1]))


def report(bench: Benchmark, found: dict[str, Any], arch: str, size: int) -> None:
    """Figures, tables and the notes."""
    train = found["train"]
    cached = Timing.from_dict(train["cached_epoch"])
    reference = Timing.from_dict(train["reference_epoch"])
    bench.timing_figure("cached epoch", cached, label="probe epoch on cached features")
    bench.timing_figure("reference epoch", reference, label="probe epoch, backbone in each step")
    bench.figure("cache fill", train["cache_fill_s"], "s", label="one-off extraction (all images)")
    speedup = reference.median / cached.median
    bench.figure("epoch speed-up", speedup, "x", better="higher")
    per_image = train["cache_fill_s"] / train["images"]
    bench.table(
        f"Depth probe training, {arch} architecture (random weights) at {size} px, tap us6 "
        f"{'x'.join(map(str, train['feature_shape']))}, {train['images']} images, "
        f"batch {train['batch']}",
        ["", "seconds"],
        [
            ["one-off extraction into the cache (all images)", round(train["cache_fill_s"], 2)],
            ["  per image", round(per_image, 2)],
            ["epoch on cached features (median of 5)", round(cached.median, 4)],
            ["epoch with the backbone in every step (reference)", round(reference.median, 2)],
            ["speed-up per epoch", f"{speedup:.0f}x"],
            [
                "break-even (epochs)",
                f"{train['cache_fill_s'] / (reference.median - cached.median):.2f}",
            ],
        ],
    )
    rows = []
    for mode in ("fused", "split"):
        run = found[mode]
        timing = Timing.from_dict(run["timing"])
        bench.timing_figure(f"{mode} latency", timing)
        bench.figure(f"{mode} peak", run["peak_gib"], "GiB")
        rows.append(
            [mode, round(timing.median, 3), round(run["session_s"], 1), round(run["peak_gib"], 2)]
        )
    bench.table(
        f"Image -> depth at {size} px, batch 1, ONNX Runtime CPU fp32 ({arch}, random weights)",
        ["case", "median s / image", "session s", "peak RSS GiB"],
        rows,
    )
    export = found["export"]
    bench.note(
        "fused: one ONNX graph image -> VAE -> UNet (to us6) -> 1x1 conv -> bins -> bilinear to "
        "the input size. split: the us6 graph in ONNX Runtime, then the same probe and upsampling "
        "in PyTorch. Each case ran in a fresh process (peak = the process's high-water mark, "
        f"session creation included). Exports: features {export['features_export_s']:.1f} s, "
        f"depth graph {export['depth_export_s']:.1f} s, peak {export['peak_gib']:.2f} GiB. "
        "Training: same images, head, AdamW and batch order in both epochs; the reference epoch "
        "runs the backbone (PyTorch fp32) on each batch as CleanDIFT's DepthPred.forward does."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model at 128 px (dry run)")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    arch, size = ("tiny", 128) if args.quick else ("sd21", 768)
    if args.case is not None:
        import torch

        torch.set_num_threads(2)
        if args.case == "train":
            found = case_train(arch, size, args.images, args.batch, args.work)
        elif args.case == "export":
            found = case_export(arch, size, args.work)
        else:
            found = case_run(args.case, size, args.repeats, args.work)
        print(json.dumps(found))
        return
    bench = Benchmark(NAME, "Probes: cached training and the fused depth graph", quick=args.quick)
    quick = ["--quick"] if args.quick else []
    common = [*quick, "--images", str(args.images), "--batch", str(args.batch)]
    found: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        work = ["--work", folder]
        for case in ("train", "export", "fused", "split"):
            print(f"case {case} ...", flush=True)
            found[case] = _child([*common, "--repeats", str(args.repeats), "--case", case, *work])
    bench.results = {"arch": arch, "size": size, **found}
    report(bench, found, arch, size)
    for path in bench.write():
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
