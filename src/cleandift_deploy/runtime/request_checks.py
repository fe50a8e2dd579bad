"""Checking a request against an artifact's manifest: taps, image size and batch size.

Every check fails with one line saying what the artifact supports and what to do, instead of an
obscure shape error from deep inside a backend.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from ..errors import CleanDiftError
from ..manifest import Manifest
from ..models import validate_taps
from ..models.taps import LATENT_STRIDE


def manifest_sha256(manifest: Manifest) -> str:
    """A hash of the manifest's content: names the exact model that produced a set of features."""
    return hashlib.sha256(manifest.to_json().encode()).hexdigest()


def select_taps(manifest: Manifest, taps: Sequence[str] | None) -> tuple[str, ...]:
    """The requested taps (all of the artifact's by default); taps it lacks are refused."""
    available = manifest.tap_names
    if taps is None:
        return available
    asked = set(taps)
    if asked and asked <= set(available):
        return tuple(t for t in available if t in asked)
    wanted = validate_taps(taps)
    missing = [t for t in wanted if t not in available]
    if missing:
        raise CleanDiftError(
            f"the model has no tap {', '.join(missing)} (it has {', '.join(available)}): "
            f"ask for those, or re-export with --taps {','.join(wanted)}"
        )
    return wanted


def _sides_inside(low: int, high: int, side: int, multiple: int) -> tuple[int, ...]:
    """The valid sides nearest `side` that lie in low..high (multiples of `multiple`)."""
    first, last = -(-low // multiple) * multiple, high // multiple * multiple
    if first > last:
        return ()
    near = min(max(side, first), last)
    below, above = near // multiple * multiple, -(-near // multiple) * multiple
    return tuple(dict.fromkeys(min(max(s, first), last) for s in (below, above)))


def sizes_inside(manifest: Manifest, height: int, width: int) -> list[str]:
    """The valid HxW sizes nearest a requested one that the artifact's profile accepts."""
    multiple = manifest.input.multiple
    heights = _sides_inside(manifest.height.min, manifest.height.max, height, multiple)
    widths = _sides_inside(manifest.width.min, manifest.width.max, width, multiple)
    if not heights or not widths:
        return []
    pairs = ((heights[0], widths[0]), (heights[-1], widths[-1]))
    return list(dict.fromkeys(f"{h}x{w}" for h, w in pairs))


def resolve_image_size(manifest: Manifest, size: tuple[int, int] | None) -> tuple[int, int]:
    """The H x W images are fitted to: `size`, or the manifest's optimal size, inside its range.

    A refused size comes with the nearest sizes the artifact accepts (multiples of its input
    multiple, inside its profile), never a suggestion the profile would refuse again."""
    height, width = size if size is not None else (manifest.height.opt, manifest.width.opt)
    multiple = manifest.input.multiple
    inside = manifest.height.contains(height) and manifest.width.contains(width)
    problems = (
        []
        if height % multiple == 0 and width % multiple == 0
        else [f"(HxW) is not a multiple of {multiple}"]
    )
    if not inside:
        problems.append(
            f"is outside the model's range {manifest.height.min}..{manifest.height.max} x "
            f"{manifest.width.min}..{manifest.width.max} (HxW)"
        )
    if problems:
        suggestion = " or ".join(sizes_inside(manifest, height, width)) or "a size inside it"
        wider = "" if inside else ", or re-export with a wider --size-range"
        raise CleanDiftError(
            f"image size {height}x{width} {' and '.join(problems)}: use {suggestion}{wider}"
        )
    return height, width


def resolve_batch_size(manifest: Manifest, batch_size: int | None) -> int:
    """How many images go to the backend at once: `batch_size` capped at the model's maximum."""
    if batch_size is None:
        return manifest.batch.max
    if batch_size < 1:
        raise CleanDiftError(f"batch size must be at least 1, got {batch_size}")
    return min(batch_size, manifest.batch.max)


def check_latents(manifest: Manifest, latents: torch.Tensor) -> torch.Tensor:
    """A float [B,4,h,w] latent batch whose image-pixel size lies in the manifest's range."""
    if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
        raise CleanDiftError(
            "this model takes VAE latents (it was exported with --no-vae): pass a float "
            "[B,4,h,w] tensor, or re-export with the VAE to extract from images"
        )
    if latents.ndim != 4:
        raise CleanDiftError(f"latents must be [B,4,h,w]; got shape {tuple(latents.shape)}")
    if not torch.isfinite(latents).all():
        raise CleanDiftError("the latents contain NaN or infinite values")
    resolve_image_size(
        manifest, (latents.shape[2] * LATENT_STRIDE, latents.shape[3] * LATENT_STRIDE)
    )
    return latents.float()


def check_prompt(
    manifest: Manifest, encoder_hidden_states: torch.Tensor | None, batch: int
) -> torch.Tensor | None:
    """The prompt embedding expanded to the batch, when the model takes one; refused otherwise."""
    if not manifest.prompt_input:
        if encoder_hidden_states is not None:
            raise CleanDiftError(
                f"this model bakes the prompt {manifest.prompt!r}: drop encoder_hidden_states, "
                "or re-export with --prompt-input"
            )
        return None
    if encoder_hidden_states is None:
        raise CleanDiftError(
            "this model takes the prompt embedding as an input: pass encoder_hidden_states [B,77,D]"
        )
    if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[0] not in (1, batch):
        raise CleanDiftError(
            f"encoder_hidden_states must be [1 or {batch}, 77, D]; "
            f"got shape {tuple(encoder_hidden_states.shape)}"
        )
    if not torch.isfinite(encoder_hidden_states).all():
        raise CleanDiftError("encoder_hidden_states contains NaN or infinite values")
    return encoder_hidden_states.float().expand(batch, -1, -1).contiguous()
