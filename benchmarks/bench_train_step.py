"""One CleanDIFT training step of the full SD2.1 architecture (random weights) on this CPU, and
the memory plan it implies for an A100-80GB (batch 8 at 768 px).

Each case runs in a fresh subprocess (so the high-water mark is that case's own peak):
- `step-*`: a whole optimiser step as `Trainer.step` does it (VAE encode, teacher at 3 stratified
  timesteps, student, heads, loss, backward, Adam) for the `us6` tap at batch 1; time is the
  median of the timed repeats after one warm-up step (which also allocates Adam's state);
- `pairs-*`: forward + backward of our loss (the student once per image, its features repeated
  for the image's 3 timesteps) against the recipe written out directly (the student once per
  (image, t) pair), interleaved in one process on the same inputs: the speed-up of that choice;
- `act-*`: forward + backward only (no optimiser) for all 11 taps (the recipe) at batch 1 and 2;
  the peak difference between the two is the activation memory one more image costs.
fp32, bf16 autocast, and bf16 with gradient checkpointing (`bf16ckpt`) are measured. The plan
scales the per-image figure by the token count (96x96 / latent^2) and adds weights, gradients and
Adam state from the parameter counts.

    flock /tmp/cpu-heavy.lock .venv/bin/python benchmarks/bench_train_step.py

Results: benchmarks/results/<machine-id>/train_step[_ARCH].{json,md} (benchmarks/harness: its
timing protocol, interleaved for `pairs-*`, and its peak-memory reader).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

from harness.memory import process_peak_gib, resident_gib
from harness.run import Benchmark
from harness.timing import Protocol, Timing, measure, measure_interleaved
from rich.progress import track

NAME = "train_step"
ALL_TAPS = ("mid", "us1", "us2", "us3", "us4", "us5", "us6", "us7", "us8", "us9", "us10")
CASES: dict[str, dict[str, Any]] = {
    "pairs-fp32-us6-b1": {"mode": "pairs", "bf16": False, "taps": ["us6"], "batch": 1},
    "step-fp32-us6-b1": {"mode": "step", "bf16": False, "taps": ["us6"], "batch": 1},
    "step-bf16-us6-b1": {"mode": "step", "bf16": True, "taps": ["us6"], "batch": 1},
    "act-fp32-all-b1": {"mode": "act", "bf16": False, "taps": list(ALL_TAPS), "batch": 1},
    "act-fp32-all-b2": {"mode": "act", "bf16": False, "taps": list(ALL_TAPS), "batch": 2},
    "act-bf16-all-b1": {"mode": "act", "bf16": True, "taps": list(ALL_TAPS), "batch": 1},
    "act-bf16-all-b2": {"mode": "act", "bf16": True, "taps": list(ALL_TAPS), "batch": 2},
    "act-bf16ckpt-all-b1": {"mode": "act", "bf16": True, "taps": list(ALL_TAPS), "batch": 1},
    "act-bf16ckpt-all-b2": {"mode": "act", "bf16": True, "taps": list(ALL_TAPS), "batch": 2},
}
GIB = 1024**3
A100_BYTES = 80e9
TARGET_BATCH, TARGET_LATENT = 8, 96


def probe(name: str, arch: str, latent: int, repeats: int) -> dict[str, Any]:
    """Build the models, run the case, return times, memory and parameter counts."""
    case = CASES[name]
    import torch

    from cleandift_deploy.models import load_vae, random_prompt_embedding, random_unet
    from cleandift_deploy.train.distill import Distiller
    from cleandift_deploy.train.loop import encode_latents
    from cleandift_deploy.train.noising import noise_scheduler, stratified_timesteps

    teacher = random_unet(arch, seed=0).unet
    vae = load_vae(None, arch, random_init=True)
    checkpointing = "ckpt" in name
    distiller = Distiller(
        teacher, case["taps"], noise_scheduler(None), seed=0, gradient_checkpointing=checkpointing
    ).train()
    trainable = distiller.trainable_parameters()
    optimizer = torch.optim.Adam(trainable, lr=1e-5)
    context = random_prompt_embedding(arch)
    generator = torch.Generator().manual_seed(0)
    batch = case["batch"]
    images = torch.rand(batch, 3, latent * 8, latent * 8, generator=generator) * 2 - 1

    def per_pair_losses(latents: Any, timesteps: Any, noise: Any) -> dict[str, Any]:
        """The reference recipe: the student runs once per (image, t) pair."""
        flat_t = timesteps.reshape(-1)
        clean = latents.repeat_interleave(timesteps.shape[1], dim=0)
        noisy = distiller.scheduler.add_noise(clean, noise, flat_t)
        with torch.no_grad():
            targets = distiller.teacher(noisy, context, flat_t.float())
        projected = distiller.heads(distiller.student(clean, context, distiller.timestep), flat_t)
        return {
            t: -torch.cosine_similarity(projected[t], targets[t], dim=1).mean() for t in targets
        }

    def one_step(reference: bool = False) -> None:
        latents = encode_latents(vae, images, "sample", generator)
        timesteps = stratified_timesteps(batch, 3, generator)
        noise = torch.randn(timesteps.numel(), *latents.shape[1:], generator=generator)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case["bf16"]):
            if reference:
                losses = per_pair_losses(latents, timesteps, noise)
            else:
                losses = distiller.losses(latents, context, timesteps, noise)
        sum(losses.values()).backward()  # type: ignore[union-attr]
        if case["mode"] == "step":
            optimizer.step()
        optimizer.zero_grad(set_to_none=case["mode"] == "step")

    before = resident_gib() * GIB
    runs = {"ours": one_step}
    if case["mode"] == "pairs":
        runs["per-pair"] = lambda: one_step(reference=True)
    # the warm-up step (it also allocates Adam's state) is timed on its own, for the table
    warmup = {k: measure(run, Protocol(warmup=0, repeats=1)).median for k, run in runs.items()}
    timings = measure_interleaved(runs, Protocol(warmup=0, repeats=repeats))
    extra = {}
    if "per-pair" in timings:
        reference = timings["per-pair"]
        extra = {
            "reference_seconds": list(reference.samples),
            "reference_median_s": reference.median,
            "reference_timing": reference.to_dict(),
            "speedup_vs_per_pair": reference.median / timings["ours"].median,
        }
    return {
        **extra,
        "seconds": list(timings["ours"].samples),
        "median_s": timings["ours"].median,
        "timing": timings["ours"].to_dict(),
        "warmup_s": warmup["ours"],
        "rss_before_step_bytes": before,
        "peak_bytes": process_peak_gib() * GIB,
        "trainable_params": sum(p.numel() for p in trainable),
        "teacher_params": sum(p.numel() for p in distiller.teacher.parameters()),
        "head_params": sum(p.numel() for p in distiller.heads.parameters()),
        "unet_params": sum(p.numel() for p in teacher.parameters()),
        "threads": torch.get_num_threads(),
    }


def run_case(name: str, arch: str, latent: int, repeats: int) -> dict[str, Any]:
    """Run one case in a fresh interpreter and parse its JSON line."""
    command = [sys.executable, __file__, "--probe", name, "--arch", arch, "--latent", str(latent)]
    command += ["--repeats", str(repeats)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"case {name} failed:\n{done.stderr[-3000:]}")
    return {**CASES[name], **json.loads(done.stdout.strip().splitlines()[-1])}


def memory_plan(results: dict[str, dict[str, Any]], latent: int) -> dict[str, Any]:
    """Bytes for batch 8 at 768 px on one GPU, from the measured per-image activations."""
    scale = (TARGET_LATENT / latent) ** 2
    act = results["act-fp32-all-b1"]
    trainable, teacher = act["trainable_params"], act["teacher_params"]
    fixed = {
        "teacher weights (fp32)": 4 * teacher,
        "student + heads weights (fp32)": 4 * trainable,
        "gradients (fp32)": 4 * trainable,
        "Adam moments (fp32)": 8 * trainable,
    }
    plan: dict[str, Any] = {"fixed_bytes": fixed, "scale_tokens": scale}
    for precision in ("fp32", "bf16", "bf16ckpt"):
        one = results[f"act-{precision}-all-b1"]["peak_bytes"]
        two = results[f"act-{precision}-all-b2"]["peak_bytes"]
        per_image = two - one
        activations = per_image * scale * TARGET_BATCH
        total = sum(fixed.values()) + activations
        plan[precision] = {
            "per_image_bytes_at_latent": per_image,
            "per_image_bytes_at_768": per_image * scale,
            "activation_bytes_batch8": activations,
            "total_bytes": total,
            "fits_a100_80gb": total < A100_BYTES * 0.9,
            "max_batch_a100_80gb": int(
                (A100_BYTES * 0.9 - sum(fixed.values())) // (per_image * scale)
            ),
        }
    return plan


def _gib(value: float) -> str:
    return f"{value / GIB:.1f}"


def report(
    bench: Benchmark,
    results: dict[str, dict[str, Any]],
    plan: dict[str, Any],
    arch: str,
    latent: int,
) -> None:
    """Figures, the table of the cases and the memory plan."""
    rows = []
    for name, r in results.items():
        bench.timing_figure(f"{name} step", Timing.from_dict(r["timing"]))
        bench.figure(f"{name} peak", r["peak_bytes"] / GIB, "GiB", label=f"{name} peak RSS")
        taps = "all 11" if len(r["taps"]) == len(ALL_TAPS) else ",".join(r["taps"])
        rows.append(
            [
                name,
                taps,
                r["batch"],
                r["median_s"],
                r["warmup_s"],
                _gib(r["peak_bytes"]),
                _gib(r["rss_before_step_bytes"]),
            ]
        )
    bench.table(
        f"One training step, {arch} architecture (random weights), latent {latent}x{latent} "
        f"({latent * 8} px), CPU",
        ["case", "taps", "batch", "median step s", "warm-up s", "peak RSS GiB", "RSS before GiB"],
        rows,
    )
    pairs = results["pairs-fp32-us6-b1"]
    lines = [
        f"Student once per image vs once per (image, t) (forward + backward, us6, batch 1, "
        f"interleaved): {pairs['median_s']:.1f} s vs {pairs['reference_median_s']:.1f} s, "
        f"x{pairs['speedup_vs_per_pair']:.2f}.",
    ]
    fixed = plan["fixed_bytes"]
    lines += ["", "## Memory plan: A100-80GB, batch 8 at 768 px (latent 96x96), all 11 taps", ""]
    lines += [f"- {k}: {_gib(v)} GiB" for k, v in fixed.items()]
    lines.append(f"- fixed total: {_gib(sum(fixed.values()))} GiB")
    for precision in ("fp32", "bf16", "bf16ckpt"):
        p = plan[precision]
        lines.append(
            f"- activations, {precision}: {_gib(p['per_image_bytes_at_latent'])} GiB per image at "
            f"latent {latent} -> x{plan['scale_tokens']:.0f} tokens = "
            f"{_gib(p['per_image_bytes_at_768'])} GiB per image at 768 px -> batch 8: "
            f"{_gib(p['activation_bytes_batch8'])} GiB; total {_gib(p['total_bytes'])} GiB "
            f"({'fits' if p['fits_a100_80gb'] else 'does not fit'}; largest batch that fits in "
            f"90% of 80 GB: {p['max_batch_a100_80gb']})"
        )
    bench.note("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="sd21", help="architecture (tiny for a dry run)")
    parser.add_argument("--latent", type=int, default=32, help="latent side (image px / 8)")
    parser.add_argument("--repeats", type=int, default=2, help="timed steps after the warm-up")
    parser.add_argument("--probe", choices=list(CASES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(args.probe, args.arch, args.latent, args.repeats)))
        return
    bench = Benchmark(NAME, "One training step")
    if args.arch != "sd21" and not bench.quick:
        bench.name = f"{NAME}_{args.arch}"  # a dry run never stands in for the full one
    results = {}
    for name in track(list(CASES), description="cases"):
        results[name] = run_case(name, args.arch, args.latent, args.repeats)
        print(name, f"{results[name]['median_s']:.1f} s", _gib(results[name]["peak_bytes"]), "GiB")
    plan = memory_plan(results, args.latent)
    report(bench, results, plan, args.arch, args.latent)
    bench.results = {"arch": args.arch, "latent": args.latent, "cases": results, "plan": plan}
    for path in bench.write():
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
