"""CLI verbs of this subpackage, registered by `cleandift_deploy.cli`: `train`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console

from ..errors import CleanDiftError
from ..lazy_choice import LazyChoice
from ..models.configs import ARCHS, default_image_size
from ..models.shapes import check_image_size
from ..models.taps import TAP_NAMES

if TYPE_CHECKING:
    from ..models.loading import LoadedUNet
    from .data import ImageFolder
    from .loop import Trainer, TrainInputs, TrainResult


def _parse_taps(values: tuple[str, ...]) -> tuple[str, ...]:
    taps = tuple(t.strip() for value in values for t in value.split(",") if t.strip())
    return taps or TAP_NAMES


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CleanDiftError("--device cuda was asked for but no CUDA GPU is visible: use cpu")
    return name


def _inputs(
    teacher: LoadedUNet, data: ImageFolder, prompt: str, captions: bool, random_init: bool
) -> TrainInputs:
    from ..models.loading import load_vae
    from .conditioning import Conditioning
    from .loop import TrainInputs
    from .noising import noise_scheduler

    vae = load_vae(teacher.root, teacher.arch, random_init=random_init)
    conditioning = Conditioning(
        teacher.root, teacher.arch, prompt, use_captions=captions, random_init=random_init
    )
    return TrainInputs(teacher, vae, conditioning, noise_scheduler(teacher.root), data)


def _image_size(teacher: LoadedUNet, requested: int | None) -> int:
    size = requested or default_image_size(teacher.arch)
    check_image_size(size, size)
    return size


def _summarise(console: Console, trainer: Trainer, result: TrainResult, curve: Path) -> None:
    from .progress import format_losses

    last = dict(zip(result.taps, result.history[-1].tolist(), strict=True))
    console.print(f"step {result.step}: {format_losses(last)}")
    console.print(f"learned timestep {float(trainer.distiller.timestep.detach()):.3f}")
    console.print(f"student: {result.student.unet}, {result.student.full}")
    console.print(f"state: {result.state}; loss curve: {curve}")


def _check_out(out: Path, resume: bool) -> None:
    from .state import STATE_NAME

    if (out / STATE_NAME).exists() and not resume:
        raise CleanDiftError(
            f"{out} already holds a training run: pass --resume to continue it, "
            "or choose another --out"
        )


@click.command()
@click.option("--teacher", "teacher_source", help="Teacher UNet: diffusers folder or safetensors.")
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
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run folder.")
@click.option("--steps", type=int, default=1000, show_default=True, help="Total optimiser steps.")
@click.option("--taps", multiple=True, help="Taps to train, e.g. us6 or mid,us3,us6 (all).")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Images per batch.")
@click.option("--grad-accum", type=int, default=1, show_default=True, help="Micro-batches/step.")
@click.option("--lr", type=float, default=1e-5, show_default=True, help="Adam learning rate.")
@click.option("--warmup", type=int, default=2000, show_default=True, help="Linear warm-up steps.")
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
def train(
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
) -> None:
    """Distil a CleanDIFT student from a teacher UNet on a folder of images."""
    from ..models.loading import resolve_source
    from .data import ImageFolder
    from .loop import Trainer, TrainSettings
    from .plot import plot_losses
    from .progress import training_progress

    _check_out(out, resume)
    settings = TrainSettings(
        taps=_parse_taps(taps),
        steps=steps,
        batch_size=batch_size,
        grad_accum=grad_accum,
        lr=lr,
        warmup=warmup,
        bf16=bf16,
        tf32=tf32,
        gradient_checkpointing=gradient_checkpointing,
        latent=latent,  # type: ignore[arg-type]
        seed=seed,
        save_every=save_every,
    )
    settings.check()
    teacher = resolve_source(teacher_source, arch=arch, random_init=random_init, seed=seed)
    size = _image_size(teacher, image_size)
    data = ImageFolder(data_dir, size, resize)  # type: ignore[arg-type]
    console = Console(stderr=True)
    console.print(
        f"{len(data)} images from {data_dir} at {size}x{size} ({len(data.skipped)} skipped)"
    )
    inputs = _inputs(teacher, data, prompt, not no_captions, random_init)
    if not inputs.conditioning.has_text_encoder and any(r.caption for r in data.records):
        console.print("captions ignored: a random-weight teacher has no text encoder")
    trainer = Trainer(inputs, settings, out, device=_device(device), resume=resume)
    with training_progress(trainer.progress.step, steps, console) as on_step:
        result = trainer.run(on_step)
    curve = plot_losses(result.history, result.taps, out / "loss_curve.png")
    _summarise(console, trainer, result, curve)


COMMANDS: list[click.Command] = [train]
