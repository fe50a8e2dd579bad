"""Hedlin et al. end to end on one pair: squash both images to the frame, optimise embeddings on
the source keypoints, read them out on the target, map the argmax back to original pixels."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from PIL import Image

from ...errors import CleanDiftError
from .model import AttentionModel
from .optimise import Optimised, optimise_embeddings
from .readout import predict_points, read_out
from .settings import HedlinSettings


@dataclass
class Matches:
    """Predicted target points `[K,2]` in original target pixels, and the optimisation record."""

    points: np.ndarray
    optimised: Optimised


def to_frame(image: np.ndarray, size: int) -> torch.Tensor:
    """uint8 `[H,W,3]` -> float `[3,size,size]` in [0, 1], squashed with Pillow's bilinear
    resize (the reference's `transforms.Resize((512, 512))` on a PIL image, then `ToTensor`)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise CleanDiftError(f"images must be uint8 [H,W,3]; got {image.dtype} {image.shape}")
    resized = Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(resized).copy()).permute(2, 0, 1).float() / 255


def points_to_frame(points: np.ndarray, width: int, height: int, size: int) -> torch.Tensor:
    """Original (x, y) -> frame pixels: `x * size / W`, `y * size / H` (the reference's scaling)."""
    scale = np.array([size / width, size / height])
    return torch.from_numpy(np.asarray(points, dtype=np.float64) * scale).float()


class HedlinMatcher:
    """Prompt-optimised attention correspondence with one frozen SD model."""

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        scheduler: DDPMScheduler,
        settings: HedlinSettings,
        *,
        prune: bool = True,
    ) -> None:
        self.settings = settings
        self.model = AttentionModel(unet, vae, scheduler, settings, prune=prune)

    def match(
        self,
        source: np.ndarray,
        target: np.ndarray,
        points: np.ndarray,
        *,
        stream: int = 0,
        progress: Callable[[int], None] | None = None,
    ) -> Matches:
        """Target points for `points [K,2]` (original source pixels) in original target pixels."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        size = self.settings.size
        frame_points = points_to_frame(points, source.shape[1], source.shape[0], size)
        optimised = optimise_embeddings(
            self.model,
            to_frame(source, size),
            frame_points,
            batch=self.settings.batch,
            stream=stream,
            progress=progress,
        )
        maps = read_out(
            self.model,
            to_frame(target, size),
            optimised.embeddings,
            batch=self.settings.batch,
            stream=stream,
            progress=progress,
        )
        predicted = predict_points(maps).double().numpy()
        scale = np.array([target.shape[1] / size, target.shape[0] / size])
        return Matches(predicted * scale, optimised)

    def work(self, keypoints: int) -> int:
        """Element-steps `match` reports to `progress` for `keypoints` points (without early
        stopping): optimisation steps plus readout crops, per embedding."""
        s = self.settings
        return keypoints * s.inits * (s.steps + s.readout_crops)
