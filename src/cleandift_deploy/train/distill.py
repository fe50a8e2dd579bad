"""The CleanDIFT objective: a frozen teacher sees noisy latents at t, a trainable copy (the
student) sees the clean latent at one learned timestep, and per-tap heads conditioned on t map the
student's features onto the teacher's. Loss: negative cosine similarity per position, per tap.

The student's features do not depend on t, so the student runs once per image and its features
are repeated for the image's teacher timesteps before the heads: the same loss and gradients as
running it once per (image, t) pair, at a third of the cost.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from torch import nn

from ..models import DEFAULT_TIMESTEP, FeatureUNet, tap_specs
from .heads import HeadConfig, ProjectionHeads
from .noising import add_noise


def negative_cosine(projected: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over batch and positions of `-cos` between channel vectors (computed in fp32)."""
    return -F.cosine_similarity(projected.float(), target.float(), dim=1).mean()


class Distiller(nn.Module):
    """Teacher, student, learned timestep and heads; `losses(...)` gives one loss per tap.

    `student_unet` is the complete student (layers past the deepest tap included, unchanged) so
    it can be saved as a full diffusers UNet; `student` is its tap-truncated view that trains.
    `gradient_checkpointing` recomputes the student's down/mid resnets and all its transformer
    blocks in the backward pass instead of storing their activations (diffusers' mechanism).
    """

    def __init__(
        self,
        teacher_unet: UNet2DConditionModel,
        taps: Sequence[str],
        scheduler: DDPMScheduler,
        head_config: HeadConfig | None = None,
        seed: int = 0,
        timestep_init: float = DEFAULT_TIMESTEP,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.student_unet = copy.deepcopy(teacher_unet).requires_grad_(True).train()
        if gradient_checkpointing:
            self.student_unet.enable_gradient_checkpointing()
        self.teacher = FeatureUNet(teacher_unet, taps, timestep=None).requires_grad_(False).eval()
        self.student = FeatureUNet(self.student_unet, taps, timestep=None)
        self.timestep = nn.Parameter(torch.tensor(float(timestep_init)))
        specs = tap_specs(teacher_unet.config)
        channels = {tap: specs[tap].channels for tap in self.student.taps}
        self.heads = ProjectionHeads(channels, head_config, seed)
        self.scheduler = scheduler

    def train(self, mode: bool = True) -> Distiller:
        """Switch the student and heads; the teacher always stays in eval mode."""
        super().train(mode)
        self.teacher.eval()
        return self

    @property
    def taps(self) -> tuple[str, ...]:
        """The trained taps, in canonical order."""
        return self.student.taps

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimiser updates, in a fixed order: the student layers up to the deepest
        tap, the heads (with the mapping network) and the learned timestep."""
        return [*self.student.parameters(), *self.heads.parameters(), self.timestep]

    def forward(
        self,
        latents: torch.Tensor,
        context: torch.Tensor,
        timesteps: torch.Tensor,
        noise: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """`losses(...)`: the call DDP wraps (its gradient hooks attach to `forward`)."""
        return self.losses(latents, context, timesteps, noise)

    def losses(
        self,
        latents: torch.Tensor,
        context: torch.Tensor,
        timesteps: torch.Tensor,
        noise: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        """Per-tap loss for clean `latents [B,4,h,w]`, `context [1|B,S,D]`, teacher
        `timesteps [B,K]` and `noise [B*K,4,h,w]`."""
        per_image = timesteps.shape[1]
        flat_t = timesteps.reshape(-1).to(latents.device)
        repeated = latents.repeat_interleave(per_image, dim=0)
        noisy = add_noise(self.scheduler, repeated, noise.to(latents.device), flat_t)
        teacher_context = (
            context.repeat_interleave(per_image, dim=0) if context.shape[0] > 1 else context
        )
        with torch.no_grad():
            targets = self.teacher(noisy, teacher_context, flat_t.float())
        clean = self.student(latents, context, self.timestep)
        expanded = {tap: f.repeat_interleave(per_image, dim=0) for tap, f in clean.items()}
        projected = self.heads(expanded, flat_t)
        return {tap: negative_cosine(projected[tap], targets[tap]) for tap in self.taps}
