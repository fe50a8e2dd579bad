"""CLI verbs of this subpackage, registered by `cleandift_deploy.cli`: `train`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console

from ..models.configs import ARCHS
from ..models.taps import TAP_NAMES
from ..train import WARMUP_STEPS
from .lazy_choice import LazyChoice
from .options import output_option, source_option, split_taps, taps_option

if TYPE_CHECKING:
    from ..train.loop import Trainer, TrainResult


def _summarise(console: Console, trainer: Trainer, result: TrainResult, curve: Path) -> None:
    from ..train.progress import format_losses

    last = dict(zip(result.taps, result.history[-1].tolist(), strict=True))
    console.print(f"step {result.step}: {format_losses(last)}")
    console.print(f"learned timestep {float(trainer.distiller.timestep.detach()):.3f}")
    console.print(f"student: {result.student.unet}, {result.student.full}")
    console.print(f"state: {result.state}; loss curve: {curve}")


LAUNCHER_OPTIONS = ("nproc_per_node", "ray_workers", "address", "gpus_per_worker")


def clamped_warmup(warmup: int | None, steps: int) -> int:
    """`--warmup` (CleanDIFT's 2000 when not given) at most `--steps`, so a short run reaches its
    learning rate; says so when it clamps."""
    chosen = WARMUP_STEPS if warmup is None else warmup
    if chosen > steps > 0:
        click.echo(f"note: warm-up {chosen} steps clamped to --steps {steps}", err=True)
        return steps
    return chosen


def rank_args(ctx: click.Context) -> list[str]:
    """This command line without the launcher options: what every rank runs."""
    args: list[str] = [ctx.command.name or "train"]
    for param in ctx.command.params:
        name = param.name or ""
        value = ctx.params.get(name)
        if not isinstance(param, click.Option) or name in LAUNCHER_OPTIONS:
            continue
        if value is None or value == param.default or value == ():
            continue
        flag = param.opts[0]
        if param.is_flag:
            args += [flag] if value else []
        elif param.multiple:
            for item in value:
                args += [flag, str(item)]
        else:
            args += [flag, str(value)]
    return args


@click.command()
@source_option("--teacher", "teacher_source", help="Teacher UNet")
@click.option("--arch", type=click.Choice(list(ARCHS)), help="Architecture (for --random-init).")
@click.option("--random-init", is_flag=True, help="Random teacher (and VAE) of --arch.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of weights and run.")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder of jpg/png/webp images (NAME.json beside one: its caption).",
)
@output_option("Run folder.")
@click.option("--steps", type=int, default=1000, show_default=True, help="Total optimiser steps.")
@taps_option("Taps to train (default: all).")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Images per batch.")
@click.option("--grad-accum", type=int, default=1, show_default=True, help="Micro-batches/step.")
@click.option("--lr", type=float, default=1e-5, show_default=True, help="Adam learning rate.")
@click.option(
    "--warmup",
    type=int,
    default=None,
    help=f"Linear warm-up steps [CleanDIFT's {WARMUP_STEPS}; clamped to --steps, with a note].",
)
@click.option("--bf16", is_flag=True, help="bf16 autocast for the UNets and heads.")
@click.option("--tf32", is_flag=True, help="Allow TF32 matmuls and convolutions (CUDA).")
@click.option("--gradient-checkpointing", is_flag=True, help="Recompute activations: less memory.")
@click.option(
    "--latent",
    type=click.Choice(["sample", "mean"]),
    default="sample",
    show_default=True,
    help="VAE posterior sample (the recipe) or mean.",
)
@click.option(
    "--resize",
    type=LazyChoice("cleandift_deploy.train.data:RESIZE_MODES"),
    default="crop",
    show_default=True,
    help="Centre-crop to a square, or squash the whole image.",
)
@click.option("--image-size", type=int, help="Training size in pixels (the architecture's).")
@click.option("--prompt", default="", help="Prompt for images without a caption file.")
@click.option("--no-captions", is_flag=True, help="Ignore caption files; use --prompt for all.")
@click.option("--save-every", type=int, default=500, show_default=True, help="Steps between saves.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--resume", is_flag=True, help="Continue the run saved in --out.")
@click.option(
    "--nproc-per-node",
    type=int,
    default=1,
    show_default=True,
    help="Processes on this machine (DDP via torch's launcher); --batch-size is the global batch.",
)
@click.option("--ray-workers", type=int, help="Run on Ray Train with this many workers.")
@click.option("--address", help="Ray cluster address for --ray-workers (default: local Ray).")
@click.option(
    "--gpus-per-worker", type=float, default=0, show_default=True, help="GPUs per Ray worker."
)
@click.pass_context
def train(
    ctx: click.Context,
    teacher_source: str | None,
    arch: str | None,
    random_init: bool,
    seed: int,
    data_dir: Path,
    out: Path,
    steps: int,
    taps: tuple[str, ...],
    batch_size: int,
    grad_accum: int,
    lr: float,
    warmup: int,
    bf16: bool,
    tf32: bool,
    gradient_checkpointing: bool,
    latent: str,
    resize: str,
    image_size: int | None,
    prompt: str,
    no_captions: bool,
    save_every: int,
    device: str,
    resume: bool,
    nproc_per_node: int,
    ray_workers: int | None,
    address: str | None,
    gpus_per_worker: float,
) -> None:
    """Distil a CleanDIFT student from a teacher UNet on a folder of images.

    One process by default; `--nproc-per-node N` (or `torchrun ... -m cleandift_deploy train`)
    trains with DDP over N processes, `--ray-workers N` on Ray Train. The result does not depend
    on the process count."""
    from ..train.distributed import session, split_batch
    from ..train.job import DistillJob, check_out, run_job
    from ..train.loop import TrainSettings
    from ..train.progress import training_progress

    check_out(out, resume)
    settings = TrainSettings(
        taps=(split_taps(taps) or TAP_NAMES),
        steps=steps,
        batch_size=batch_size,
        grad_accum=grad_accum,
        lr=lr,
        warmup=clamped_warmup(warmup, steps),
        bf16=bf16,
        tf32=tf32,
        gradient_checkpointing=gradient_checkpointing,
        latent=latent,  # type: ignore[arg-type]
        seed=seed,
        save_every=save_every,
    )
    settings.check()
    job = DistillJob(
        data=data_dir.absolute(),
        out=out.absolute(),
        settings=settings,
        teacher=teacher_source,
        arch=arch,
        random_init=random_init,
        image_size=image_size,
        resize=resize,  # type: ignore[arg-type]
        prompt=prompt,
        captions=not no_captions,
        device=device,
        resume=resume,
    )
    if ray_workers is not None:
        from ..train.ray_train import run_on_ray

        run_on_ray(job, ray_workers, address=address, gpus_per_worker=gpus_per_worker)
        click.echo(f"trained on {ray_workers} Ray workers: {out}", err=True)
        return
    if nproc_per_node != 1:
        from ..train.launch import check_launch, launch_local

        check_launch(nproc_per_node, batch_size)
        launch_local(nproc_per_node, rank_args(ctx))
        return
    console = Console(stderr=True)
    with session(device) as world:
        split_batch(batch_size, world.size)
        trainer, result = run_job(
            job, world, console, bar=lambda a, b: training_progress(a, b, console)
        )
        if world.main:
            _summarise(console, trainer, result, out / "loss_curve.png")


COMMANDS: list[click.Command] = [train]
