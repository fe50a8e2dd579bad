"""DIFT ensemble on the CPU: the VAE encoder once per image vs DIFT's one encoder pass per copy.

SD2.1 architecture (random weights: none can be downloaded here), one 768x768 image, ensemble 8,
t = 261, tap us6, PyTorch fp32. Both variants use the same modules and the same fixed draws
(posterior eps and diffusion noise), so their features must agree; they differ only in where
the posterior is sampled:

- `vae-once`: the exported graph's computation (`ImageFeatureModel` with `EnsembleNoiser`): one
  encoder pass, then `mean + std * eps` for the 8 copies;
- `per-copy`: DIFT's `SDFeaturizer`: the image repeated 8 times through the encoder, one posterior
  sample per copy.

Each variant runs in its own fresh process (spawned one after the other) so its peak memory is
its own: peak RSS after the models are built, the kernel's high-water mark reset first
(`harness.memory.reset_peak`). Seconds: the harness's protocol, `--repeats` timed runs after the
first (the warm-up, whose peak memory is the figure). Times are compared with the fp32 GEMM
ceiling measured in the same run (FLOPs counted on the meta device).

    flock /tmp/cpu-heavy.lock .venv/bin/python benchmarks/bench_dift.py

Results: benchmarks/results/<machine-id>/dift.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from harness.memory import process_peak_gib, reset_peak, resident_gib
from harness.run import Benchmark
from harness.timing import Protocol, Timing, load_average, measure

NAME = "dift"
VARIANTS = ("vae-once", "per-copy")


def _per_copy(module: Any, image: Any) -> Any:
    """DIFT's order of work with the graph's own modules and draws: encode every copy."""
    import torch

    from cleandift_deploy.models.noise import fixed_draws

    model = module.image_model
    noiser = model.noiser
    n = noiser.spec.ensemble
    pixels = image.to(torch.float32) / 127.5 - 1.0
    mean, std = model.vae_encoder.posterior(pixels.repeat_interleave(n, dim=0))
    draws = fixed_draws(noiser.spec, mean.shape[1], mean.shape[2], mean.shape[3]).to(mean.device)
    posterior_eps, noise_eps = (d.repeat(image.shape[0], 1, 1, 1) for d in draws)
    noisy = noiser.signal * (mean + std * posterior_eps) + noiser.noise * noise_eps
    context = module.prompt_embeds.expand(noisy.shape[0], -1, -1)
    found = model.features(noisy, context)
    return noiser.average(found)["us6"]


def run_variant(variant: str, arch: str, size: int, ensemble: int, repeats: int, out: str) -> None:
    """In a fresh process: build `arch` (random weights), time `variant`, save its figures."""
    import torch

    from cleandift_deploy.models import random_unet
    from cleandift_deploy.models.graph_module import build_export_graph
    from cleandift_deploy.models.graph_options import ExportOptions
    from cleandift_deploy.models.noise import NoiseSpec

    torch.manual_seed(0)
    loaded = random_unet(arch, seed=0)
    options = ExportOptions(
        taps=("us6",), image_size=(size, size), noise=NoiseSpec(261, ensemble, seed=0)
    )
    module = build_export_graph(loaded, options).module
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(0, 256, (1, 3, size, size), dtype=np.uint8))

    def once() -> Any:
        with torch.inference_mode():
            return module(image)[0] if variant == "vae-once" else _per_copy(module, image)

    baseline = resident_gib()
    reset_peak()
    features = once()
    peak = process_peak_gib()
    timing = measure(once, Protocol(warmup=0, repeats=repeats))
    np.save(out + ".npy", features.numpy())
    record = {
        "median_s": timing.median,
        "runs_s": list(timing.samples),
        "peak_gb": peak,
        "models_gb": baseline,
        "activations_gb": peak - baseline,
    }
    Path(out + ".json").write_text(json.dumps(record))


def count_tflop(arch: str, size: int, ensemble: int) -> dict[str, float]:
    """TFLOP of each variant (convolutions, matrix products, attention; 2 per multiply-add),
    counted by PyTorch's `FlopCounterMode` on the meta device: no weights, no compute."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cleandift_deploy.models import FeatureUNet, VAEEncoder, build_vae, get_arch, random_unet
    from cleandift_deploy.models.graph_module import ExportGraph
    from cleandift_deploy.models.noise import EnsembleNoiser, NoiseSpec

    unet = random_unet(arch, device="meta").unet
    vae = VAEEncoder(build_vae(dict(get_arch(arch).vae), "meta"))
    noiser = EnsembleNoiser(NoiseSpec(261, ensemble), vae.latent_channels, (size // 8, size // 8))
    width = int(unet.config.cross_attention_dim)
    prompt = torch.zeros(1, 77, width, device="meta")
    features = FeatureUNet(unet, ("us6",), timestep=261.0)
    module = ExportGraph(features, vae, prompt, noiser).to("meta").eval()
    image = torch.zeros(1, 3, size, size, dtype=torch.uint8, device="meta")
    found = {}
    for variant in VARIANTS:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            module(image) if variant == "vae-once" else _per_copy(module, image)
        found[variant] = counter.get_total_flops() / 1e12
    return found


def agreement(first: np.ndarray, second: np.ndarray) -> dict[str, float]:
    """Per-position cosine (min) and relative L2 of two [1,C,h,w] maps, in float64."""
    a, b = first.astype(np.float64), second.astype(np.float64)
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {
        "cosine_min": float(cosine.min()),
        "relative_l2": float(np.linalg.norm(a - b) / np.linalg.norm(a)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sd21", help="tiny: a quick check of the script")
    parser.add_argument("--size", type=int, default=768)
    parser.add_argument("--ensemble", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--flops-only", action="store_true", help="Count FLOPs, time nothing.")
    args = parser.parse_args()
    bench = Benchmark(NAME, "DIFT ensemble: VAE once vs per copy")
    tflop = count_tflop(args.arch, args.size, args.ensemble)
    setup = {
        "arch": f"{args.arch} (random weights)",
        "size": args.size,
        "ensemble": args.ensemble,
        "timestep": 261,
        "tap": "us6",
        "precision": "fp32 PyTorch eager",
        "repeats": args.repeats,
        "threads": _threads(),
    }
    bench.results = {
        "setup": setup,
        "tflop": tflop,
        "flop_ratio": tflop["per-copy"] / tflop["vae-once"],
    }
    for variant in VARIANTS:
        bench.figure(f"{variant} tflop", tflop[variant], "TFLOP", label=f"{variant} FLOPs")
    bench.note(
        f"Ensemble {args.ensemble} at {args.size} px, {setup['arch']}, {setup['precision']}. "
        f"FLOPs (FlopCounterMode, meta device): vae-once {tflop['vae-once']:.2f} TFLOP, per-copy "
        f"{tflop['per-copy']:.2f} TFLOP: {bench.results['flop_ratio']:.2f}x."
    )
    if args.flops_only:
        bench.note("Timing not run (`--flops-only`).")
    else:
        report(bench, timed_variants(args), tflop)
    for path in bench.write():
        print(f"wrote {path}")


def timed_variants(args: argparse.Namespace) -> dict[str, Any]:
    """Each variant timed in its own fresh process; ratios and agreement of their features."""
    from rich.progress import Progress

    context = multiprocessing.get_context("spawn")
    found: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder, Progress() as progress:
        task = progress.add_task("variants", total=len(VARIANTS))
        for variant in VARIANTS:
            out = str(Path(folder) / variant)
            before = load_average()
            child = context.Process(
                target=run_variant,
                args=(variant, args.arch, args.size, args.ensemble, args.repeats, out),
            )
            child.start()
            child.join()
            if child.exitcode != 0:
                raise SystemExit(f"{variant} failed with exit code {child.exitcode}")
            found[variant] = json.loads(Path(out + ".json").read_text())
            found[variant]["timing"] = Timing.from_samples(
                found[variant]["runs_s"], 1, before, load_average(), _threads()
            )
            found[variant]["features"] = np.load(out + ".npy")
            progress.advance(task)
    once, per_copy = found["vae-once"], found["per-copy"]
    return {
        "variants": {v: {k: x for k, x in found[v].items() if k != "features"} for v in VARIANTS},
        "speedup": per_copy["median_s"] / once["median_s"],
        "peak_ratio": per_copy["peak_gb"] / once["peak_gb"],
        "activation_ratio": per_copy["activations_gb"] / once["activations_gb"],
        "agreement": agreement(per_copy["features"], once["features"]),
    }


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def report(bench: Benchmark, timed: dict[str, Any], tflop: dict[str, float]) -> None:
    """Figures (seconds against the fp32 GEMM ceiling, peak memory), the table and ratios."""
    rows = []
    for name, v in timed["variants"].items():
        bench.timing_figure(
            f"{name} seconds", v["timing"], work=tflop[name] * 1e12, ceiling="fp32_gemm"
        )
        bench.figure(f"{name} peak", v["peak_gb"], "GiB", label=f"{name} peak RSS")
        rows.append([name, v["median_s"], v["peak_gb"], v["models_gb"], v["activations_gb"]])
        v["timing"] = v["timing"].to_dict()
    bench.figure("speedup", timed["speedup"], "x", label="per-copy / vae-once seconds")
    bench.table(
        "Variants", ["variant", "median s", "peak GiB", "models GiB", "activations GiB"], rows
    )
    a = timed["agreement"]
    bench.note(
        f"per-copy / vae-once: {timed['speedup']:.2f}x seconds, {timed['peak_ratio']:.2f}x peak "
        f"memory ({timed['activation_ratio']:.2f}x above the models' own memory). Features "
        f"agree: min cosine {a['cosine_min']:.7f}, relative L2 {a['relative_l2']:.2e} (same "
        "draws; only the batch the encoder sees differs). Each variant in a fresh process."
    )
    bench.results.update(timed)


if __name__ == "__main__":
    main()
