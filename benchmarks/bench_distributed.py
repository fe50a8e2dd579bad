"""Distributed training on this CPU: steps/s of 1 vs 2 processes (gloo, one thread each) and the
communication share of a step, for the tiny model and the SD 2.1 architecture.

Cases (each in fresh processes started with torch.multiprocessing, rank 0 reports):
- `tiny-1p`, `tiny-2p`: the distillation `Trainer` (taps us3,us6, 64 px) at the same batch per
  process (`--per-rank-batch`), so 2 processes do twice the work per step (weak scaling). Each
  step is timed twice, interleaved: a normal DDP step, and the same step under `no_sync` (no
  gradient all-reduce); the communication share is 1 - no_sync / DDP step time.
- `allreduce-*`: `dist.all_reduce` of one fp32 tensor the size of the student's trainable
  gradient (tiny, and the SD 2.1 student truncated after us6: 774 M parameters, 3.1 GB), 2
  processes; with the SD 2.1 one-process step time (`--sd21-step-s`, from bench_train_step) this
  gives the communication share an SD 2.1 DDP step would have here.
- SD 2.1 training itself in 2 processes is not run when it does not fit: one process peaks at
  about 17 GB at 256 px (bench_train_step), two need about 34 GB. The check uses this machine's
  memory; it refuses rather than swaps.

    flock /tmp/cpu-heavy.lock .venv/bin/python benchmarks/bench_distributed.py [--quick]

Results: benchmarks/results/<machine-id>/distributed[-quick].{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp
from harness.run import Benchmark
from harness.timing import Timing

NAME = "distributed"
SD21_STUDENT_PARAMS = 774_200_000
"""Trainable parameters of the SD 2.1 student cut after us6 (UNet up to up_blocks[1]; NOTES.md)
plus the heads are ~1% more: this is the gradient DDP all-reduces every step."""
SD21_PEAK_GIB = 16.8
"""One-process peak RSS of an SD 2.1 training step at 256 px (bench_train_step, us6, batch 1)."""
SD21_STEP_S = 48.2
"""One-process SD 2.1 step at 256 px on the 2-core machine (bench_train_step, us6, batch 1)."""
GIB = 1024**3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _join(rank: int, size: int, port: int) -> Any:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(size),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    from cleandift_deploy.train.distributed import init

    return init("cpu")


def _tiny_trainer(world: Any, batch: int, folder: Path) -> Any:
    import numpy as np
    from PIL import Image

    from cleandift_deploy.models import load_vae, random_unet
    from cleandift_deploy.train.conditioning import Conditioning
    from cleandift_deploy.train.data import ImageFolder
    from cleandift_deploy.train.loop import Trainer, TrainInputs, TrainSettings
    from cleandift_deploy.train.noising import noise_scheduler

    images = folder / "images"
    if world.main:
        images.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for i in range(8):
            pixels = (rng.uniform(0, 255, (64, 64, 3))).astype(np.uint8)
            Image.fromarray(pixels).save(images / f"{i}.png")
    from cleandift_deploy.train.distributed import barrier

    barrier(world)
    inputs = TrainInputs(
        random_unet("tiny", seed=1),
        load_vae(None, "tiny", random_init=True),
        Conditioning(None, "tiny", random_init=True),
        noise_scheduler(None),
        ImageFolder(images, 64),
    )
    settings = TrainSettings(
        taps=("us3", "us6"), steps=10_000, batch_size=batch * world.size, warmup=0,
        save_every=10_000, lr=1e-4,
    )  # fmt: skip
    return Trainer(inputs, settings, folder / "run", world=world)


def _timed(world: Any, run: Any) -> float:
    from cleandift_deploy.train.distributed import barrier

    barrier(world)
    started = time.perf_counter()
    run()
    barrier(world)
    return time.perf_counter() - started


def _train_case(rank: int, size: int, port: int, args: dict[str, Any], out: str) -> None:
    import contextlib

    from cleandift_deploy.train.distributed import teardown

    world = _join(rank, size, port)
    trainer = _tiny_trainer(world, args["batch"], Path(args["folder"]))
    no_sync = getattr(trainer.model, "no_sync", contextlib.nullcontext)

    def quiet_step() -> None:
        with no_sync():
            trainer.step()

    for _ in range(args["warmup"]):
        trainer.step()
    synced, local = [], []
    for _ in range(args["repeats"]):
        synced.append(_timed(world, trainer.step))
        local.append(_timed(world, quiet_step))
    if world.main:
        Path(out).write_text(json.dumps({"synced": synced, "local": local}))
    teardown(world)


def _allreduce_case(rank: int, size: int, port: int, args: dict[str, Any], out: str) -> None:
    import torch.distributed as dist

    from cleandift_deploy.train.distributed import teardown

    world = _join(rank, size, port)
    tensor = torch.ones(args["elements"], dtype=torch.float32)
    times = []
    for _ in range(args["warmup"] + args["repeats"]):
        times.append(_timed(world, lambda: dist.all_reduce(tensor)))
    if world.main:
        Path(out).write_text(json.dumps({"samples": times[args["warmup"] :]}))
    teardown(world)


def _spawn(case: Any, size: int, args: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-ddp-") as folder:
        out = str(Path(folder) / "result.json")
        args = {**args, "folder": folder}
        mp.spawn(case, args=(size, _free_port(), args, out), nprocs=size, join=True)
        return dict(json.loads(Path(out).read_text()))


def _trainable_elements(taps: tuple[str, ...]) -> int:
    from cleandift_deploy.models import random_unet
    from cleandift_deploy.train.distill import Distiller
    from cleandift_deploy.train.noising import noise_scheduler

    distiller = Distiller(random_unet("tiny", seed=1).unet, taps, noise_scheduler(None))
    return sum(p.numel() for p in distiller.trainable_parameters())


def _available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024 / GIB
    return 0.0


def run(bench: Benchmark, args: argparse.Namespace) -> None:
    """Every case, figures and tables."""
    repeats = 2 if bench.quick else args.repeats
    rows, results = [], {}
    for size in (1, 2):
        case = f"tiny-{size}p"
        r = _spawn(_train_case, size, {"batch": args.per_rank_batch, "warmup": 1,
                                       "repeats": repeats})  # fmt: skip
        synced = Timing.from_samples(r["synced"], warmup=1, own_threads=size)
        local = Timing.from_samples(r["local"], warmup=1, own_threads=size)
        share = max(0.0, 1 - local.median / synced.median) if size > 1 else 0.0
        results[case] = {**r, "processes": size, "per_rank_batch": args.per_rank_batch}
        bench.timing_figure(f"{case} step", synced, label=f"tiny, {size} process(es), DDP step")
        bench.figure(f"{case} steps/s", 1 / synced.median, "steps/s", better="higher")
        images = args.per_rank_batch * size / synced.median
        bench.figure(f"{case} images/s", images, "images/s", better="higher")
        rows.append([case, size, args.per_rank_batch * size, synced.median, 1 / synced.median,
                     images, local.median, f"{100 * share:.1f}%"])  # fmt: skip
    base = results["tiny-1p"]
    scaling = (statistics.median(base["synced"]) * 2) / statistics.median(
        results["tiny-2p"]["synced"]
    )
    bench.figure("tiny 2p/1p images/s", scaling, "x", better="higher")
    bench.table(
        "Tiny distillation step, per-rank batch fixed (weak scaling)",
        ["case", "processes", "global batch", "step s", "steps/s", "images/s",
         "step without all-reduce s", "communication share"],
        rows,
    )  # fmt: skip
    tiny_elements = _trainable_elements(("us3", "us6"))
    sizes = {"tiny": tiny_elements}
    if not bench.quick:
        sizes["sd21-us6"] = SD21_STUDENT_PARAMS // args.sd21_divisor
    reduce_rows = []
    for label, elements in sizes.items():
        need = 2 * 2.2 * elements * 4 / GIB
        if need > _available_gib() * 0.9:
            bench.note(f"all-reduce {label} skipped: needs ~{need:.1f} GiB, "
                       f"{_available_gib():.1f} available")  # fmt: skip
            continue
        r = _spawn(_allreduce_case, 2, {"elements": elements, "warmup": 1,
                                        "repeats": 2 if bench.quick else 3})  # fmt: skip
        timing = Timing.from_samples(r["samples"], warmup=1, own_threads=2)
        gigabytes = elements * 4 / 1e9
        bench.timing_figure(f"allreduce {label}", timing, label=f"all-reduce {label} fp32")
        results[f"allreduce-{label}"] = {**r, "elements": elements}
        reduce_rows.append([label, elements, gigabytes, timing.median, gigabytes / timing.median])
    bench.table(
        "gloo all-reduce of the trainable gradient, 2 processes on this machine",
        ["student", "elements", "GB fp32", "median s", "GB/s (tensor size / time)"],
        reduce_rows,
    )
    if "allreduce-sd21-us6" in results:
        reduce_s = statistics.median(results["allreduce-sd21-us6"]["samples"])
        if args.sd21_divisor > 1:
            reduce_s *= args.sd21_divisor
            bench.note(
                f"The SD 2.1 all-reduce ran on 1/{args.sd21_divisor} of the gradient "
                f"({SD21_STUDENT_PARAMS // args.sd21_divisor} elements) and is scaled x"
                f"{args.sd21_divisor} (bandwidth-bound at these sizes)."
            )
            bench.figure("allreduce sd21-us6 scaled", reduce_s, "s")
        share = reduce_s / (args.sd21_step_s + reduce_s)
        bench.figure("sd21 communication share (estimate)", share, "fraction")
        bench.note(
            f"SD 2.1 at 256 px: one-process step {args.sd21_step_s:.1f} s (bench_train_step, us6, "
            f"batch 1) + all-reduce {reduce_s:.1f} s of its 3.1 GB gradient -> communication "
            f"{100 * share:.1f}% of a 2-process step without overlap (DDP overlaps buckets with "
            "the backward pass, so this is an upper bound)."
        )
    pair = 2 * SD21_PEAK_GIB
    bench.note(
        f"SD 2.1 training in 2 processes was not run: one process peaks at {SD21_PEAK_GIB} GiB "
        f"at 256 px, two need ~{pair:.0f} GiB; this machine has "
        f"{_available_gib():.1f} GiB available now. One process fits; the all-reduce of its "
        "gradient (above) is what DDP adds."
    )
    bench.results = {"cases": results, "sd21_step_s": args.sd21_step_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 repeats, no SD 2.1 all-reduce.")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--per-rank-batch", type=int, default=2)
    parser.add_argument("--sd21-step-s", type=float, default=SD21_STEP_S)
    parser.add_argument(
        "--sd21-divisor",
        type=int,
        default=1,
        help="All-reduce 1/N of the SD 2.1 gradient and scale the time by N (less memory).",
    )
    args = parser.parse_args()
    quick = True if args.quick else None  # None: the suite's environment decides
    with Benchmark(NAME, "Distributed training: 1 vs 2 processes", quick=quick) as bench:
        run(bench, args)


if __name__ == "__main__":
    main()
