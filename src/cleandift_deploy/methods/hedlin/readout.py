"""Reading the optimised embeddings out on the target (`run_image_with_tokens_cropped`).

Per embedding: `readout_crops` crops (the first four pinned to the corners, then each around the
running argmax of the maps so far), noise at t = 40, the token's attention of every layer
resized to the crop and pasted back, averaged where crops overlap. Per keypoint the maps are
averaged over its embeddings, softmaxed over the frame per layer, averaged over layers, and the
argmax (+0.5 px) is the prediction (`validate_epoch`). All embeddings of all keypoints run as one
batch per crop round.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .geometry import argmax_xy, corner_anchors, sample_crop
from .model import AttentionModel
from .optimise import element_chunks, encode_crops
from .streams import READOUT, draw_noise, element_generator

Progress = Callable[[int], None]


def _anchor(
    sums: torch.Tensor, counts: torch.Tensor, round_: int, size: int
) -> tuple[float, float]:
    if round_ < 4:
        return corner_anchors(size)[round_]
    running = torch.nan_to_num(sums / counts, nan=0.0).mean(dim=0)
    x, y = argmax_xy(running).tolist()
    return x, y


@torch.no_grad()
def _read_group(
    model: AttentionModel,
    image: torch.Tensor,
    contexts: torch.Tensor,
    elements: list[tuple[int, int]],
    stream: int,
    progress: Progress | None,
) -> torch.Tensor:
    s = model.settings
    n, side = len(elements), s.crop_side
    generators = [element_generator(s.seed, stream, k, r, READOUT) for k, r in elements]
    sums = torch.zeros(n, len(s.layers), s.size, s.size, dtype=model.dtype)
    counts = torch.zeros(n, 1, s.size, s.size, dtype=model.dtype)
    for round_ in range(s.readout_crops):
        starts = [
            sample_crop(
                _anchor(sums[i], counts[i], round_, s.size),
                side,
                s.size,
                s.crop_margin,
                generators[i],
            )
            for i in range(n)
        ]
        latents = encode_crops(model, image, starts)
        noise = draw_noise(generators, tuple(latents.shape[1:]), s.noise)
        noisy = model.noisy(latents, noise, s.readout_timestep)
        maps = model.maps(noisy, contexts, s.readout_timestep, side)
        for i, (x0, y0) in enumerate(starts):
            sums[i, :, y0 : y0 + side, x0 : x0 + side] += maps[i]
            counts[i, :, y0 : y0 + side, x0 : x0 + side] += 1
        if progress is not None:
            progress(n)
    return torch.nan_to_num(sums / counts, nan=0.0)


def read_out(
    model: AttentionModel,
    image: torch.Tensor,
    embeddings: torch.Tensor,
    *,
    batch: int = 0,
    stream: int = 0,
    progress: Progress | None = None,
) -> torch.Tensor:
    """`[K, R, L, S, S]`: each embedding's pasted, overlap-averaged attention maps on `image`."""
    keypoints, inits = embeddings.shape[:2]
    s = model.settings
    out = torch.zeros(keypoints, inits, len(s.layers), s.size, s.size, dtype=model.dtype)
    for elements in element_chunks(keypoints, inits, batch):
        contexts = torch.stack([embeddings[k, r] for k, r in elements])
        maps = _read_group(model, image, contexts, elements, stream, progress)
        for i, (k, r) in enumerate(elements):
            out[k, r] = maps[i]
    return out


def predict_points(maps: torch.Tensor) -> torch.Tensor:
    """`[K, R, L, S, S]` -> `[K, 2]` frame (x, y): mean over embeddings, softmax over the frame
    per layer, mean over layers, argmax + 0.5."""
    mean = maps.mean(dim=1)
    probs = torch.softmax(mean.flatten(-2), dim=-1).reshape(mean.shape)
    return argmax_xy(probs.mean(dim=1))
