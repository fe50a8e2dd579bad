"""Prompt optimisation on the source image: every keypoint's `inits` embeddings in one batch.

Per step each embedding gets its own random crop containing its keypoint, resized to the frame,
encoded by the VAE (posterior mean), noised at t = 140 and run through the UNet; the loss is the
MSE between the token's attention maps (every chosen layer, upsampled to the frame) and a
Gaussian at the keypoint. The reference (`optimize_prompt`) does this for one embedding at a
time; here the batch holds all of them (`batch=0`) or `batch` at a time (`batch=1` is the
reference's loop). Each embedding is its own Adam parameter and its own random stream, so its
updates do not depend on what else is in the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .geometry import argmax_xy, crop_resized, gaussian_target, point_in_crop, sample_crop
from .model import AttentionModel
from .streams import OPTIMISE, draw_noise, element_generator

PROMPT_TOKENS = 77
Progress = Callable[[int], None]
"""Called with the number of element-steps just finished."""


@dataclass
class Optimised:
    """The optimised embeddings `[K, R, 77, D]`, losses `[K, R, steps]` (NaN after an early
    stop) and the steps each embedding ran `[K, R]`."""

    embeddings: torch.Tensor
    losses: torch.Tensor
    steps_run: torch.Tensor


def element_chunks(keypoints: int, inits: int, batch: int) -> list[list[tuple[int, int]]]:
    """All (keypoint, init) pairs in keypoint-major order, cut into batches (`batch=0`: one)."""
    elements = [(k, r) for k in range(keypoints) for r in range(inits)]
    size = len(elements) if batch <= 0 else batch
    return [elements[i : i + size] for i in range(0, len(elements), size)]


def encode_crops(
    model: AttentionModel, image: torch.Tensor, starts: Sequence[tuple[int, int]], chunk: int = 4
) -> torch.Tensor:
    """Latents of each crop; crops shared by several embeddings are encoded once."""
    settings = model.settings
    unique = list(dict.fromkeys(starts))
    parts = [
        model.encode(crop_resized(image, unique[i : i + chunk], settings.crop_side, settings.size))
        for i in range(0, len(unique), chunk)
    ]
    latents = torch.cat(parts)
    return latents[[unique.index(start) for start in starts]]


class _Group:
    """One batch of embeddings being optimised together."""

    def __init__(self, model: AttentionModel, elements: list[tuple[int, int]], stream: int) -> None:
        settings = model.settings
        self.model, self.elements = model, elements
        self.generators = [
            element_generator(settings.seed, stream, k, r, OPTIMISE) for k, r in elements
        ]
        self.params = [
            torch.randn(PROMPT_TOKENS, model.width, generator=g)
            .to(model.dtype)
            .requires_grad_(True)
            for g in self.generators
        ]
        self.optimiser = torch.optim.Adam(self.params, lr=settings.lr)
        self.losses = torch.full((len(elements), settings.steps), math.nan)
        self.steps_run = torch.zeros(len(elements), dtype=torch.long)
        self.last = [(math.inf, math.inf)] * len(elements)
        self.still = [0] * len(elements)

    def step(self, image: torch.Tensor, points: torch.Tensor, active: list[int], step: int) -> None:
        """One Adam step for the active embeddings."""
        s = self.model.settings
        starts, centres = [], []
        for i in active:
            point = (float(points[self.elements[i][0], 0]), float(points[self.elements[i][0], 1]))
            start = sample_crop(point, s.crop_side, s.size, s.crop_margin, self.generators[i])
            starts.append(start)
            centres.append(point_in_crop(point, start, s.crop_side, s.size))
        latents = encode_crops(self.model, image, starts)
        noise = draw_noise([self.generators[i] for i in active], tuple(latents.shape[1:]), s.noise)
        noisy = self.model.noisy(latents, noise, s.optimise_timestep)
        contexts = torch.stack([self.params[i] for i in active])
        maps = self.model.maps(noisy, contexts, s.optimise_timestep, s.size)
        target = gaussian_target(torch.tensor(centres, dtype=maps.dtype), s.size, s.sigma_px)
        per_element = ((maps - target[:, None]) ** 2).mean(dim=(1, 2, 3))
        per_element.sum().backward()
        self.optimiser.step()
        self.optimiser.zero_grad(set_to_none=True)
        peaks = argmax_xy(maps.detach().mean(dim=1)) * s.crop_side / s.size
        for j, i in enumerate(active):
            self.losses[i, step] = float(per_element[j].detach())
            self.steps_run[i] = step + 1
            self._track(i, starts[j][0] + float(peaks[j, 0]), starts[j][1] + float(peaks[j, 1]))

    def _track(self, i: int, x: float, y: float) -> None:
        moved = math.hypot(x - self.last[i][0], y - self.last[i][1])
        self.still[i] = self.still[i] + 1 if moved < self.model.settings.early_stop_px else 0
        self.last[i] = (x, y)

    def active(self) -> list[int]:
        """Embeddings still optimising (all of them unless early stopping is on)."""
        patience = self.model.settings.early_stop
        return [i for i in range(len(self.elements)) if patience <= 0 or self.still[i] < patience]


def optimise_embeddings(
    model: AttentionModel,
    image: torch.Tensor,
    points: torch.Tensor,
    *,
    batch: int = 0,
    stream: int = 0,
    progress: Progress | None = None,
) -> Optimised:
    """Optimise `inits` embeddings for each of `points [K,2]` (frame px) on `image [3,S,S]` in
    [0, 1]; `batch` embeddings per UNet batch (0: all at once, 1: the reference's loop)."""
    s = model.settings
    keypoints = points.shape[0]
    embeddings = torch.zeros(keypoints, s.inits, PROMPT_TOKENS, model.width, dtype=model.dtype)
    losses = torch.full((keypoints, s.inits, s.steps), math.nan)
    steps_run = torch.zeros(keypoints, s.inits, dtype=torch.long)
    for elements in element_chunks(keypoints, s.inits, batch):
        group = _Group(model, elements, stream)
        for step in range(s.steps):
            active = group.active()
            if not active:
                break
            group.step(image, points, active, step)
            if progress is not None:
                progress(len(active))
        for i, (k, r) in enumerate(elements):
            embeddings[k, r] = group.params[i].detach()
            losses[k, r] = group.losses[i]
            steps_run[k, r] = group.steps_run[i]
    return Optimised(embeddings, losses, steps_run)
