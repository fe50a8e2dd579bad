"""The training loop: batches, the VAE, the optimiser step, warm-up, checkpoints and resume.

Randomness is a function of the run's position, so nothing but the position needs saving: the
image order is a function of (seed, sample position), and each image's VAE sample, teacher
timesteps and noise come from its own generator seeded by (seed, sample position, step)
(`distributed.sample_generator`). On the CPU, N steps + resume + M steps therefore equals N + M
steps in one go, bit for bit, and the draws do not depend on how many processes share the batch.

Under torchrun or Ray Train (`world` from `distributed.init`) each rank reads its slice of every
global batch (`--batch-size` is the global batch), the student trains under DDP (gradients averaged
over ranks: the loss is the mean over the global batch), the logged losses are averaged over
ranks, and only rank 0 writes the student and the state.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import AutoencoderKL, DDPMScheduler

from ..errors import CleanDiftError
from ..models import TAP_NAMES, validate_taps
from ..models.loading import LoadedUNet
from . import WARMUP_STEPS
from .conditioning import Conditioning
from .data import ImageFolder, SampleOrder
from .deployable import StudentFiles, save_student, student_files
from .distill import Distiller
from .distributed import (
    World,
    accumulate,
    freeze_except,
    mean_over_ranks,
    on_main,
    rank_positions,
    sample_generator,
    wrap,
)
from .heads import HeadConfig
from .noising import stratified_timesteps
from .state import (
    STATE_NAME,
    Progress,
    SavedState,
    read_state,
    restore_model,
    restore_optimizer_state,
    save_state,
)

LatentMode = Literal["mean", "sample"]
RESUME_MUST_MATCH = ("arch", "taps", "teacher_sha256", "head", "seed", "timesteps_per_image")
"""Settings a resumed run must share with the saved one (others, like lr, may change)."""


@dataclass(frozen=True)
class TrainSettings:
    """Everything that shapes a run (defaults: the CleanDIFT recipe, except the step count)."""

    taps: tuple[str, ...] = TAP_NAMES
    steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-5
    warmup: int = WARMUP_STEPS
    bf16: bool = False
    tf32: bool = False
    gradient_checkpointing: bool = False
    latent: LatentMode = "sample"
    timesteps_per_image: int = 3
    seed: int = 0
    save_every: int = 500
    head: HeadConfig = field(default_factory=HeadConfig)

    def check(self) -> None:
        """One-line errors for values that cannot work."""
        validate_taps(self.taps)
        for name in ("steps", "batch_size", "grad_accum", "timesteps_per_image", "save_every"):
            if getattr(self, name) < 1:
                raise CleanDiftError(f"{name.replace('_', '-')} must be at least 1")
        if self.lr <= 0 or self.warmup < 0:
            raise CleanDiftError("the learning rate must be positive and the warm-up not negative")


@dataclass
class TrainInputs:
    """The models and data a run needs besides its settings."""

    teacher: LoadedUNet
    vae: AutoencoderKL
    conditioning: Conditioning
    scheduler: DDPMScheduler
    data: ImageFolder


@dataclass(frozen=True)
class TrainResult:
    """What a finished run leaves behind."""

    step: int
    state: Path
    student: StudentFiles
    history: torch.Tensor
    taps: tuple[str, ...]


def learning_rate(step: int, base: float, warmup: int) -> float:
    """Linear warm-up over `warmup` steps from base/warmup to base, then constant."""
    return base if warmup == 0 else base * min(1.0, (step + 1) / warmup)


@torch.no_grad()
def encode_latents(
    vae: AutoencoderKL,
    images: torch.Tensor,
    mode: LatentMode,
    generator: torch.Generator | Sequence[torch.Generator],
) -> torch.Tensor:
    """Scaled VAE latents of images in [-1, 1]: the posterior mean or a sample of it (with one
    generator per image, each image's draw is its own: independent of the batch it sits in)."""
    posterior = vae.encode(images).latent_dist
    if mode == "mean":
        latents = posterior.mode()
    elif isinstance(generator, torch.Generator):
        latents = posterior.sample(generator)
    else:
        shape = posterior.mean.shape[1:]
        eps = torch.stack([torch.randn(shape, generator=g) for g in generator])
        latents = posterior.mean + posterior.std * eps.to(posterior.mean)
    shift = vae.config.get("shift_factor") or 0.0
    return (latents - shift) * vae.config.scaling_factor


StepCallback = Callable[[int, dict[str, float]], None]


class Trainer:
    """One distillation run writing into `out`; `run()` trains up to `settings.steps`."""

    def __init__(
        self,
        inputs: TrainInputs,
        settings: TrainSettings,
        out: Path,
        *,
        device: str = "cpu",
        resume: bool = False,
        world: World | None = None,
    ) -> None:
        settings.check()
        self.inputs, self.settings, self.out = inputs, settings, out
        self.world = world or World(device=torch.device(device))
        self.device = self.world.device
        rank_positions(0, settings.batch_size, self.world)  # refuses an indivisible batch
        self.order = SampleOrder(len(inputs.data), settings.seed)
        self.distiller = Distiller(
            inputs.teacher.unet,
            settings.taps,
            inputs.scheduler,
            settings.head,
            settings.seed,
            gradient_checkpointing=settings.gradient_checkpointing,
        )
        self.progress = Progress()
        self._saved_at = -1
        saved = self._read_resume() if resume else None
        if saved is not None:
            restore_model(self.distiller, saved)
            self.progress = saved.progress
        self.distiller.to(self.device).train()
        freeze_except(self.distiller, self.distiller.trainable_parameters())
        self.model = wrap(self.distiller, self.world)
        self.inputs.vae.to(self.device)
        self.optimizer = torch.optim.Adam(self.distiller.trainable_parameters(), lr=settings.lr)
        if saved is not None:
            restore_optimizer_state(
                self.optimizer, saved.tensors, saved.metadata["optimizer_groups"]
            )

    @property
    def state_path(self) -> Path:
        """The resumable state file of this run."""
        return self.out / STATE_NAME

    def settings_record(self) -> dict[str, Any]:
        """The settings stored with the state, checked again on resume."""
        return {
            **dataclasses.asdict(self.settings),
            "taps": list(self.distiller.taps),
            "arch": self.inputs.teacher.arch,
            "teacher_sha256": self.inputs.teacher.checkpoint_sha256,
        }

    def _read_resume(self) -> SavedState:
        saved = read_state(self.state_path)
        stored, current = saved.settings, self.settings_record()
        for key in RESUME_MUST_MATCH:
            if stored.get(key) != current[key]:
                raise CleanDiftError(
                    f"cannot resume: {key} was {stored.get(key)!r}, now {current[key]!r}; "
                    "use the saved run's settings or a new --out"
                )
        return saved

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if not self.settings.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _batch(self, positions: range) -> tuple[torch.Tensor, torch.Tensor]:
        indices = self.order.indices(positions.start, len(positions))
        data = self.inputs.data
        images = torch.stack([data.load(i) for i in indices]).to(self.device)
        context = self.inputs.conditioning([data.caption(i) for i in indices])
        return images, context.to(self.device)

    def _micro_step(self) -> torch.Tensor:
        """Forward and backward of this rank's slice of the next global batch (a batch is never
        read twice); the detached loss per tap."""
        positions = rank_positions(self.progress.cursor, self.settings.batch_size, self.world)
        self.progress.cursor += self.settings.batch_size
        generators = [
            sample_generator(self.settings.seed, p, self.progress.step) for p in positions
        ]
        images, context = self._batch(positions)
        latents = encode_latents(self.inputs.vae, images, self.settings.latent, generators)
        per_image = self.settings.timesteps_per_image
        timesteps = torch.cat([stratified_timesteps(1, per_image, g) for g in generators])
        noise = torch.cat(
            [torch.randn((per_image, *latents.shape[1:]), generator=g) for g in generators]
        )
        with self._autocast():
            losses = self.model(latents, context, timesteps, noise.to(self.device))
        total: torch.Tensor = sum(losses.values())
        (total / self.settings.grad_accum).backward()
        return torch.stack([losses[tap].detach().float() for tap in self.distiller.taps])

    def step(self) -> dict[str, float]:
        """One optimiser step (over `grad_accum` micro-batches, gradients synchronised over the
        ranks once, in the last); the loss per tap averaged over micro-batches and ranks."""
        lr = learning_rate(self.progress.step, self.settings.lr, self.settings.warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        totals = []
        for sync in accumulate(self.model, self.settings.grad_accum):
            with sync:
                totals.append(self._micro_step())
        means_tensor = mean_over_ranks(torch.stack(totals).mean(dim=0).cpu(), self.world)
        self._check_finite(means_tensor)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        means = dict(zip(self.distiller.taps, means_tensor.tolist(), strict=True))
        row = means_tensor.reshape(1, -1)
        history = self.progress.history
        self.progress.history = row if history is None else torch.cat([history, row])
        self.progress.step += 1
        return means

    def _check_finite(self, means: torch.Tensor) -> None:
        taps = self.distiller.taps
        bad = [tap for tap, loss in zip(taps, means, strict=True) if not torch.isfinite(loss)]
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            raise CleanDiftError(
                f"the loss of {', '.join(bad)} is not finite at step {self.progress.step + 1}: "
                "lower --lr or drop --bf16; the last saved state was left untouched"
            )

    @property
    def student_files(self) -> StudentFiles:
        """Where the deployable student is written."""
        return student_files(self.out / "student")

    def _write(self) -> StudentFiles:
        files = save_student(self.student_files, self.distiller)
        save_state(
            self.state_path, self.distiller, self.optimizer, self.progress, self.settings_record()
        )
        return files

    def save(self) -> StudentFiles:
        """Write the deployable student, then the resumable state (both atomically, rank 0 only;
        every rank waits and fails together if the write fails)."""
        files = on_main(self.world, self._write)
        self._saved_at = self.progress.step
        return files or self.student_files

    def steps(self) -> Iterator[tuple[int, dict[str, float]]]:
        """Train until `settings.steps`, saving every `save_every` steps; yields (step, losses)."""
        while self.progress.step < self.settings.steps:
            losses = self.step()
            if self.progress.step % self.settings.save_every == 0:
                self.save()
            yield self.progress.step, losses

    def run(self, on_step: StepCallback | None = None) -> TrainResult:
        """Train to the end, save, and return where everything went."""
        if self.settings.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        for step, losses in self.steps():
            if on_step is not None:
                on_step(step, losses)
        files = self.save() if self._saved_at != self.progress.step else self.student_files
        history = self.progress.history
        return TrainResult(
            self.progress.step,
            self.state_path,
            files,
            history if history is not None else torch.empty(0, len(self.distiller.taps)),
            self.distiller.taps,
        )
