"""Hedlin et al. on this CPU: the batched, pruned optimisation and readout against the reference's
one-at-a-time loop, on the tiny and the SD1.5 architecture (random weights).

- `loop` is the reference's structure (`utils/optimize.py`): one embedding at a time (batch 1),
  the whole UNet run, every crop encoded by the VAE for every embedding;
- `batched` runs every keypoint's every init as one batch, the UNet cut after the deepest chosen
  attention (up_blocks[2].attentions[0]: the 64x64 up block never runs), and a crop shared by
  several embeddings encoded once (the four corner crops of the readout are shared by all).
Both draw the same crops, noise and initial embeddings (per-embedding random streams), so their
predictions must be identical; the benchmark checks it.

The reference's settings (129 steps, 20 readout crops, 5 inits, 512 px) cost hours per pair on
two CPU cores, so each case runs reduced steps / crops (and, for SD1.5, a reduced frame), times
every optimisation step and readout round, and extrapolates to the reference's 129 steps and
4 corner + 16 argmax-anchored rounds: seconds per keypoint = (129 x step + 4 x corner round +
16 x other round) x embeddings / keypoints. Each case runs in a fresh subprocess (own peak RSS).

    flock /tmp/cpu-heavy.lock .venv/bin/python benchmarks/bench_hedlin.py
    python benchmarks/bench_hedlin.py --cases tiny-quick     # seconds: a check of the script

Results: benchmarks/results/<machine-id>/hedlin.{json,md} (benchmarks/harness); a run of some
cases keeps this machine's other cases.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

from harness.memory import process_peak_gib
from harness.run import Benchmark
from harness.timing import Protocol, Timing, measure

NAME = "hedlin"
REFERENCE_STEPS, REFERENCE_CROPS, CORNERS = 129, 20, 4
CASES: dict[str, dict[str, Any]] = {
    "tiny-quick": {"arch": "tiny", "size": 64, "keypoints": 2, "inits": 2, "steps": 2, "crops": 5},
    "tiny": {"arch": "tiny", "size": 64, "keypoints": 10, "inits": 5, "steps": 4, "crops": 6},
    "sd15": {"arch": "sd15", "size": 128, "keypoints": 10, "inits": 2, "steps": 2, "crops": 5},
    "sd15-512": {"arch": "sd15", "size": 512, "keypoints": 2, "inits": 1, "steps": 1, "crops": 5},
}


def _picture(height: int, width: int, seed: int) -> Any:
    import numpy as np

    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, size=(height // 16 + 2, width // 16 + 2, 3))
    rows = np.linspace(0, coarse.shape[0] - 1.001, height).astype(int)
    cols = np.linspace(0, coarse.shape[1] - 1.001, width).astype(int)
    return coarse[rows][:, cols].astype(np.uint8)


def _split(stamps: list[float], start: float, case: dict[str, Any], batched: bool) -> dict:
    """Per-phase durations from the progress timestamps (the call order is fixed)."""
    times = [b - a for a, b in zip([start, *stamps[:-1]], stamps, strict=True)]
    steps, crops = case["steps"], case["crops"]
    elements = 1 if batched else case["keypoints"] * case["inits"]
    opt, read = times[: steps * elements], times[steps * elements :]
    rounds = [read[i::crops] for i in range(crops)] if not batched else [[t] for t in read]
    corner = [t for i, r in enumerate(rounds) if i < CORNERS for t in r]
    other = [t for i, r in enumerate(rounds) if i >= CORNERS for t in r]
    return {
        "step_s": statistics.median(opt),
        "corner_round_s": statistics.median(corner),
        "other_round_s": statistics.median(other),
        "units": elements,
    }


def run_child(name: str, mode: str, threads: int) -> dict[str, Any]:
    """One case in this process: build, warm up, match once, report times and predictions."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    from cleandift_deploy.methods.hedlin.matcher import HedlinMatcher
    from cleandift_deploy.methods.hedlin.settings import HedlinSettings
    from cleandift_deploy.models import load_vae, random_unet
    from cleandift_deploy.train.noising import noise_scheduler

    case = CASES[name]
    batched = mode == "batched"
    settings = HedlinSettings(
        size=case["size"],
        inits=case["inits"],
        steps=case["steps"],
        readout_crops=case["crops"],
        batch=0 if batched else 1,
        seed=1,
    )
    unet = random_unet(case["arch"], seed=0).unet
    vae = load_vae(None, case["arch"], random_init=True)
    matcher = HedlinMatcher(unet, vae, noise_scheduler(None), settings, prune=batched)
    source, target = _picture(300, 400, 1), _picture(320, 280, 2)
    points = np.random.default_rng(3).uniform([10, 10], [390, 290], size=(case["keypoints"], 2))
    warm = HedlinMatcher(
        unet,
        vae,
        noise_scheduler(None),
        HedlinSettings(size=case["size"], inits=1, steps=1, readout_crops=1),
        prune=batched,
    )
    warm.match(source, target, points[:1])
    stamps: list[float] = []
    begun: list[float] = []
    found: list[Any] = []

    def match() -> None:
        begun.append(time.perf_counter())
        found.append(
            matcher.match(
                source, target, points, progress=lambda _n: stamps.append(time.perf_counter())
            )
        )

    timing = measure(match, Protocol(warmup=0, repeats=1))  # warmed up above; minutes per run
    total, result = timing.median, found[0]
    phases = _split(stamps, begun[0], case, batched)
    units = phases.pop("units")
    full = (
        REFERENCE_STEPS * phases["step_s"]
        + CORNERS * phases["corner_round_s"]
        + (REFERENCE_CROPS - CORNERS) * phases["other_round_s"]
    )
    return {
        "mode": mode,
        "seconds": total,
        "seconds_per_keypoint": total / case["keypoints"],
        "reference_settings_seconds_per_keypoint": (
            full * (1 if batched else units) / case["keypoints"]
        ),
        **phases,
        "peak_rss_gib": process_peak_gib(),
        "timing": timing.to_dict(),
        "points": result.points.tolist(),
        "losses": result.optimised.losses.flatten().tolist(),
        "threads": threads,
    }


def _run_case(name: str, mode: str, threads: int) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", name, mode, "--threads", str(threads)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(output.strip().splitlines()[-1]))


def _compare(loop: dict[str, Any], batched: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    losses_a, losses_b = np.array(loop["losses"]), np.array(batched["losses"])
    return {
        "same_predictions": loop["points"] == batched["points"],
        "max_loss_rel_diff": float(np.max(np.abs(losses_a - losses_b) / np.abs(losses_a))),
        "speedup_measured": loop["seconds"] / batched["seconds"],
        "speedup_reference_settings": loop["reference_settings_seconds_per_keypoint"]
        / batched["reference_settings_seconds_per_keypoint"],
    }


def report(bench: Benchmark, results: dict[str, Any]) -> None:
    """Figures per case and mode, the two tables."""
    rows, comparisons = [], []
    for name, entry in results["cases"].items():
        case = entry.get("settings", CASES.get(name, {}))
        label = (
            f"{case['size']} px, {case['keypoints']} kp x {case['inits']} inits, "
            f"{case['steps']} steps, {case['crops']} crops"
        )
        for mode in ("loop", "batched"):
            run = entry[mode]
            if "timing" in run:
                bench.timing_figure(f"{name} {mode}", Timing.from_dict(run["timing"]))
            bench.figure(
                f"{name} {mode} ref s/kp",
                run["reference_settings_seconds_per_keypoint"],
                "s",
                label=f"{name} {mode}: s / keypoint at the reference's settings",
            )
            rows.append(
                [
                    case["arch"],
                    label,
                    mode,
                    run["seconds"],
                    run["seconds_per_keypoint"],
                    run["reference_settings_seconds_per_keypoint"],
                    run["peak_rss_gib"],
                ]
            )
        c = entry["comparison"]
        comparisons.append(
            [
                name,
                f"{c['speedup_measured']:.2f}x",
                f"{c['speedup_reference_settings']:.2f}x",
                c["same_predictions"],
                f"{c['max_loss_rel_diff']:.1e}",
            ]
        )
    bench.table(
        "Batched + pruned vs the reference's one-at-a-time loop",
        [
            "arch",
            "case",
            "mode",
            "s total",
            "s / keypoint",
            "s / keypoint, ref. settings",
            "peak RSS GiB",
        ],
        rows,
    )
    bench.table(
        "Speed-up and agreement",
        [
            "case",
            "speed-up measured",
            "speed-up at ref. settings",
            "same predictions",
            "max loss rel. diff",
        ],
        comparisons,
    )
    bench.note(
        f"torch threads {results['threads']}. Random weights. Measured at reduced settings "
        "(column 'case'); 'ref. settings' extrapolates the timed steps and rounds to 129 steps + "
        "20 readout crops (see the script's docstring). Each case in a fresh process."
    )


def main() -> None:
    """Run every case (or `--cases`) in both modes; merge into this machine's hedlin results."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", nargs=2, metavar=("CASE", "MODE"))
    parser.add_argument("--cases", default="tiny,sd15", help=f"of {', '.join(CASES)}")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child[0], args.child[1], args.threads)))
        return
    from rich.progress import track

    bench = Benchmark(NAME, "Hedlin et al.: batched vs one-at-a-time")
    path = bench.path("json")
    earlier = json.loads(path.read_text())["results"]["cases"] if path.is_file() else {}
    results: dict[str, Any] = {"threads": args.threads, "cases": earlier}
    names = args.cases.split(",")
    for name in track(names, description="hedlin cases"):
        loop = _run_case(name, "loop", args.threads)
        batched = _run_case(name, "batched", args.threads)
        results["cases"][name] = {
            "settings": CASES[name],
            "loop": loop,
            "batched": batched,
            "comparison": _compare(loop, batched),
        }
    report(bench, results)
    bench.results = results
    for written in bench.write():
        print(f"wrote {written}")


if __name__ == "__main__":
    main()
