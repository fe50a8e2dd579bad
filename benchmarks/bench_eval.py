"""Matching an SPair-sized evaluation from cached features: the evaluator vs DIFT's procedure.

A synthetic set with SPair-71k's test size: 12,234 pairs over 18 categories of 100 images each
(1,800 images, 500x375), 1 to 20 keypoints per pair, SD2.1 us6 maps [1280, 48, 48] (768 px
input). The features are random (seeded), held in memory as the feature cache would hand them
over (a pool of distinct maps, image i using map i mod pool, to keep memory bounded).

- `eval`: what `eval pck` does -- pairs grouped by target, the target field prepared once per
  target (`prepare_target`), every pair matched with `match_into` (exact bilinear upsampling, nn);
- `dift`: DIFT's procedure per pair -- upsample both maps to the original size (bilinear),
  L2-normalise every pixel, take the source pixel nearest each point, argmax over the target --
  on a subset of pairs (it needs ~2 GB per pair and seconds each).

Both run in this process one after the other; the ratio is per pair, and every prediction of the
subset must be identical. Results: benchmarks/results/<machine-id>/eval_matching[_PAIRS][-quick]
.{json,md} (the harness: machine, ceilings, timing protocol, schema).

    flock /tmp/cpu-heavy.lock .venv/bin/python benchmarks/bench_eval.py
    .venv/bin/python benchmarks/bench_eval.py --quick     # small smoke run
    # SPair's sharing (~6.8 pairs per target) on fewer pairs, when the full run does not fit:
    flock /tmp/cpu-heavy.lock .venv/bin/python benchmarks/bench_eval.py \
        --pairs 2000 --per-category 16
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from harness.run import Benchmark
from harness.timing import Protocol, Timing, measure
from rich.progress import track

from cleandift_deploy.eval.grid import MatchGrid
from cleandift_deploy.kernels.target_field import prepare_target
from cleandift_deploy.methods.features import match_into

NAME = "eval_matching"
IMAGE = (375, 500)  # (H, W)
MAP = (1280, 48, 48)
SEED = 0


@dataclass(frozen=True)
class Pair:
    source: int
    target: int
    points: np.ndarray


def make_pairs(pairs: int, categories: int, per_category: int, seed: int) -> list[Pair]:
    """Pairs of distinct images of one category, 1..20 uniform random points in the source."""
    rng = np.random.default_rng(seed)
    made = []
    for index in range(pairs):
        category = index % categories
        source, target = rng.choice(per_category, 2, replace=False) + category * per_category
        count = int(rng.integers(1, 21))
        points = rng.uniform([0, 0], [IMAGE[1] - 1, IMAGE[0] - 1], size=(count, 2))
        made.append(Pair(int(source), int(target), points))
    return made


def feature_pool(size: int, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(*MAP, generator=generator) for _ in range(size)]


def grid_of(pool: list[torch.Tensor], image: int) -> MatchGrid:
    """An image's cached map on its matching grid ("squash": the original image)."""
    return MatchGrid(pool[image % len(pool)], IMAGE, IMAGE, None)


def run_eval(pairs: list[Pair], pool: list[torch.Tensor]) -> dict[int, np.ndarray]:
    """Match every pair the evaluator's way; the predictions by pair index."""
    order = sorted(range(len(pairs)), key=lambda i: (pairs[i].target, i))
    predictions: dict[int, np.ndarray] = {}
    current, field = -1, None
    for index in track(order, description="eval: matching all pairs"):
        pair = pairs[index]
        target = grid_of(pool, pair.target)
        if pair.target != current:
            field = prepare_target(target.features, target.size, "bilinear")
            current = pair.target
        assert field is not None
        source = grid_of(pool, pair.source)
        predictions[index] = match_into(field, target, source, pair.points)
    return predictions


@torch.inference_mode()
def dift_match(source: torch.Tensor, target: torch.Tensor, points: np.ndarray) -> np.ndarray:
    """DIFT's procedure: upsample both maps to the image size, normalise, argmax per point."""
    height, width = IMAGE
    src = F.normalize(F.interpolate(source[None], size=IMAGE, mode="bilinear")[0], dim=0)
    tgt = F.normalize(F.interpolate(target[None], size=IMAGE, mode="bilinear")[0], dim=0)
    ys = np.floor(points[:, 1] + 0.5).astype(int).clip(0, height - 1)
    xs = np.floor(points[:, 0] + 0.5).astype(int).clip(0, width - 1)
    queries = src[:, ys, xs].T
    index = (queries @ tgt.reshape(tgt.shape[0], -1)).argmax(dim=1).numpy()
    return np.stack([index % width, index // width], axis=1).astype(np.float64)


def run_dift(
    pairs: list[Pair], subset: list[int], pool: list[torch.Tensor]
) -> tuple[Timing, dict[int, np.ndarray]]:
    """DIFT's procedure on the subset, each pair one timed run (no warm-up: each is seconds)."""
    queue = iter(track(subset, description="dift: subset"))
    predictions: dict[int, np.ndarray] = {}

    def one() -> None:
        index = next(queue)
        pair = pairs[index]
        source, target = pool[pair.source % len(pool)], pool[pair.target % len(pool)]
        predictions[index] = dift_match(source, target, pair.points)

    return measure(one, Protocol(warmup=0, repeats=len(subset))), predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 pairs, 2 DIFT pairs")
    parser.add_argument("--dift-pairs", type=int, default=40)
    parser.add_argument("--pool", type=int, default=48, help="distinct cached maps")
    parser.add_argument("--pairs", type=int, default=12234, help="pairs (SPair test: 12,234)")
    parser.add_argument("--per-category", type=int, default=100, help="images per category")
    args = parser.parse_args()
    total, dift_pairs = (100, 2) if args.quick else (args.pairs, args.dift_pairs)
    name = NAME + ("" if total == 12234 or args.quick else f"_{total}")
    with Benchmark(name, "Evaluator matching vs DIFT's procedure", args.quick) as bench:
        pairs = make_pairs(total, 18, args.per_category, SEED)
        pool = feature_pool(args.pool, SEED)
        subset = sorted(np.random.default_rng(1).choice(total, dift_pairs, replace=False).tolist())
        ours: dict[int, np.ndarray] = {}
        timing = measure(lambda: ours.update(run_eval(pairs, pool)), Protocol(0, 1))
        bench.timing_figure("eval all pairs", timing, label=f"eval: all {total} pairs")
        dift, theirs = run_dift(pairs, subset, pool)
        bench.timing_figure("dift per pair", dift, label="DIFT: one pair")
        identical = all(np.array_equal(ours[i], theirs[i]) for i in subset)
        eval_per_pair = timing.median / total
        speedup = dift.median / eval_per_pair
        bench.figure("eval per pair", eval_per_pair, "s", label="eval: one pair")
        bench.figure("speedup per pair", speedup, "x", label="speed-up per pair", better="higher")
        points = int(sum(len(p.points) for p in pairs))
        images = len({p.source for p in pairs} | {p.target for p in pairs})
        compared = int(sum(len(pairs[i].points) for i in subset))
        bench.table(
            "Matching all pairs",
            ["procedure", "pairs timed", "seconds", "ms / pair", "all pairs (s)"],
            [
                [
                    "eval (field per target, exact bilinear nn)",
                    total,
                    timing.median,
                    1000 * eval_per_pair,
                    timing.median,
                ],
                [
                    "DIFT (upsample both, normalise, argmax)",
                    dift_pairs,
                    sum(dift.samples),
                    1000 * dift.median,
                    f"{dift.median * total:.0f} (estimate)",
                ],
            ],
        )
        bench.note(
            f"{total} pairs, {points} points, {images} images {IMAGE[1]}x{IMAGE[0]}, maps "
            f"{list(MAP)}, {torch.get_num_threads()} torch threads. Speed-up per pair: "
            f"**{speedup:.1f}x**; predictions identical on the DIFT subset: **{identical}** "
            f"({compared} points)."
        )
        bench.results = {
            "threads": torch.get_num_threads(),
            "pairs": total,
            "points": points,
            "images": images,
            "targets": len({p.target for p in pairs}),
            "dift_pairs": dift_pairs,
            "speedup": speedup,
            "identical": identical,
            "compared_points": compared,
        }


if __name__ == "__main__":
    main()
