"""One distillation run as a function of plain settings: what `train` runs in one process, in
every torchrun rank and in every Ray Train worker, so all three write the same run folder.

`DistillJob` holds only paths, strings and numbers (it travels to Ray workers); `run_job` loads the
teacher, VAE, conditioning and images, trains on this process's share and, on rank 0, draws the
loss curve.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from ..errors import CleanDiftError
from .data import ResizeMode
from .distributed import World, on_main
from .loop import StepCallback, Trainer, TrainInputs, TrainResult, TrainSettings

CURVE_NAME = "loss_curve.png"


@dataclass(frozen=True)
class DistillJob:
    """Everything a distillation run needs, in picklable form."""

    data: Path
    out: Path
    settings: TrainSettings = field(default_factory=TrainSettings)
    teacher: str | None = None
    arch: str | None = None
    random_init: bool = False
    image_size: int | None = None
    resize: ResizeMode = "crop"
    prompt: str = ""
    captions: bool = True
    device: str = "auto"
    resume: bool = False


def check_out(out: Path, resume: bool) -> None:
    """Refuse to start a new run over an existing one (and to resume nothing)."""
    from .state import STATE_NAME

    if (out / STATE_NAME).exists() and not resume:
        raise CleanDiftError(
            f"{out} already holds a training run: pass --resume to continue it, "
            "or choose another --out"
        )


def _inputs(job: DistillJob, console: Console | None) -> TrainInputs:
    from ..models.configs import default_image_size
    from ..models.loading import load_vae, resolve_source
    from ..models.shapes import check_image_size
    from .conditioning import Conditioning
    from .data import ImageFolder
    from .noising import noise_scheduler

    seed = job.settings.seed
    teacher = resolve_source(job.teacher, arch=job.arch, random_init=job.random_init, seed=seed)
    size = job.image_size or default_image_size(teacher.arch)
    check_image_size(size, size)
    data = ImageFolder(job.data, size, job.resize)
    vae = load_vae(teacher.root, teacher.arch, random_init=job.random_init)
    conditioning = Conditioning(
        teacher.root,
        teacher.arch,
        job.prompt,
        use_captions=job.captions,
        random_init=job.random_init,
    )
    if console is not None:
        skipped = len(data.skipped)
        console.print(f"{len(data)} images from {job.data} at {size}x{size} ({skipped} skipped)")
        if not conditioning.has_text_encoder and any(r.caption for r in data.records):
            console.print("captions ignored: a random-weight teacher has no text encoder")
    return TrainInputs(teacher, vae, conditioning, noise_scheduler(teacher.root), data)


ProgressBar = Callable[[int, int], AbstractContextManager[StepCallback]]
"""(first step, total steps) -> a context yielding a per-step callback (the CLI's rich bar)."""


def run_job(
    job: DistillJob,
    world: World,
    console: Console | None = None,
    bar: ProgressBar | None = None,
    on_step: StepCallback | None = None,
) -> tuple[Trainer, TrainResult]:
    """Train (or resume) `job` as this process of `world`: `bar` shows progress on rank 0,
    `on_step` runs on every rank after each step; rank 0 writes the files."""
    check_out(job.out, job.resume)
    job.settings.check()
    main_console = console if world.main else None
    inputs = _inputs(job, main_console)
    trainer = Trainer(inputs, job.settings, job.out, resume=job.resume, world=world)
    shown = bar(trainer.progress.step, job.settings.steps) if bar and world.main else None
    with shown if shown is not None else nullcontext() as update:

        def each_step(step: int, losses: dict[str, float]) -> None:
            if update is not None:
                update(step, losses)
            if on_step is not None:
                on_step(step, losses)

        result = trainer.run(each_step)
    on_main(world, lambda: plot_curve(result))
    return trainer, result


def plot_curve(result: TrainResult) -> Path:
    """The loss curve beside the state (atomically)."""
    from .plot import plot_losses

    return plot_losses(result.history, result.taps, result.state.parent / CURVE_NAME)
