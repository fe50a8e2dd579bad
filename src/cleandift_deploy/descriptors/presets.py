"""Descriptor recipes: which SD taps, how they are combined, PCA, DINOv2, weights, matching.

The named presets are entries of `cleandift_deploy.methods.catalog` (one table for every fact of
a method); this module holds the `Preset` type and the functions that apply one.

Facts from the reference code (shared/METHODS.md §1, §2, §5). Tap names are ours: sd-dino's and
GeoAware's s3 / s4 / s5 (tensors entering LDM output_blocks 8 / 5 / 2) are us8 / us5 / us2.

- `dift`: us6 of SD 2.1 at 768 px (squashed), noisy latent at t=261, an ensemble of 8 noise draws,
  bilinear upsampling to the original image and a cosine argmax.
- `cleandift`: the same readout on the clean CleanDIFT features (learned t, no noise).
- `sd-dino`: SD 1.5 at t=100 (letterboxed); per layer co-PCA to 256 dims, s5 -> s4's grid,
  [s4|s5] -> s3's grid, SD = [s3|s4|s5] (768); DINOv2-B/14 block 11 at 840 px (768); each part
  L2-normalised, concatenated with equal weights; nearest neighbour on the 60 x 60 grid.
- `geoaware` (GeoAware-SC zero-shot): t=50, no PCA, [s3 | s4 | s5 each bilinear to s3's grid |
  DINO] (3968), SD part and DINO part normalised separately, concatenated, normalised again;
  window soft-argmax (r=5, beta=0.02); the adaptive flip needs SAM masks and is not part of it.

Timestep, noise, ensemble and FreeU belong to the SD graph: export it with
`cleandift-deploy export --method NAME`, the same names as these presets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import CleanDiftError

if TYPE_CHECKING:
    import torch

    from .pca import PcaBasis

COMBINES = ("single", "progressive", "resize")


@dataclass(frozen=True)
class Preset:
    """A descriptor recipe. `sd_taps` are finest first; `grid` says where matching happens:
    "image" (maps bilinearly upsampled to the original image, DIFT) or "cells" (the descriptor
    grid in the letterboxed canvas, sd-dino / GeoAware)."""

    name: str
    sd_taps: tuple[str, ...]
    combine: str = "single"
    pca_dims: int | None = None
    dino: bool = False
    weights: tuple[float, float] = (1.0, 1.0)
    renormalise: bool = False
    mode: str = "nn"
    grid: str = "image"
    sd_resize: str = "squash"
    sd_size: int = 768
    dino_size: int = 840

    @property
    def pairwise(self) -> bool:
        """Whether descriptors depend on the pair (co-PCA), so cannot be cached per image."""
        return self.pca_dims is not None


def _tap_maps(preset: Preset, taps: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
    missing = [t for t in preset.sd_taps if t not in taps]
    if missing:
        raise CleanDiftError(
            f"preset {preset.name} needs the SD taps {', '.join(preset.sd_taps)}; the model lacks "
            f"{', '.join(missing)}: export it with --taps {' --taps '.join(preset.sd_taps)}"
        )
    return [taps[t].float() for t in preset.sd_taps]


def combine_layers(preset: Preset, maps: list[torch.Tensor]) -> torch.Tensor:
    """The SD part from per-layer maps (finest first) by the preset's rule."""
    from .layers import grid_of, progressive_concat, resize_concat

    if preset.combine == "single" or len(maps) == 1:
        return maps[0]
    if preset.combine == "progressive":
        return progressive_concat(maps)
    return resize_concat(maps, grid_of(maps[0]))


def fuse(preset: Preset, sd: torch.Tensor, dino: torch.Tensor | None) -> torch.Tensor:
    """The final descriptor map: the SD part alone, or SD (resized to DINO's grid) and DINO
    normalised part-wise with the preset's weights."""
    from .layers import grid_of, normalise_parts, resize_map

    if not preset.dino:
        return sd
    if dino is None:
        raise CleanDiftError(f"preset {preset.name} fuses DINOv2 features: give a DINOv2 model")
    sd = resize_map(sd, grid_of(dino))
    return normalise_parts([sd, dino.float()], preset.weights, preset.renormalise)


def describe(
    preset: Preset,
    taps: Mapping[str, torch.Tensor],
    dino: torch.Tensor | None = None,
    bases: Mapping[str, PcaBasis] | None = None,
) -> torch.Tensor:
    """One image's descriptor [D, h, w] from its SD taps ([C, h, w] each) and DINO map.

    A PCA preset needs fitted `bases` (one per tap) here; pairwise co-PCA is `describe_pair`.
    """
    maps = _tap_maps(preset, taps)
    if preset.pca_dims is not None:
        if bases is None:
            raise CleanDiftError(
                f"preset {preset.name} uses PCA: describe pairs with describe_pair (co-PCA), "
                "or pass a fitted basis per tap"
            )
        missing = [t for t in preset.sd_taps if t not in bases]
        if missing:
            raise CleanDiftError(f"the PCA basis file has no basis for {', '.join(missing)}")
        maps = [bases[t].project_map(m) for t, m in zip(preset.sd_taps, maps, strict=True)]
    return fuse(preset, combine_layers(preset, maps), dino)


def describe_pair(
    preset: Preset,
    taps_a: Mapping[str, torch.Tensor],
    taps_b: Mapping[str, torch.Tensor],
    dino_a: torch.Tensor | None = None,
    dino_b: torch.Tensor | None = None,
    method: str = "svd",
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Descriptors of a pair; PCA presets use co-PCA per layer on the two images together."""
    from .pca import co_pca_maps

    if preset.pca_dims is None:
        return describe(preset, taps_a, dino_a), describe(preset, taps_b, dino_b)
    maps_a, maps_b = [], []
    for a, b in zip(_tap_maps(preset, taps_a), _tap_maps(preset, taps_b), strict=True):
        pa, pb = co_pca_maps(a, b, preset.pca_dims, method, seed)
        maps_a.append(pa)
        maps_b.append(pb)
    return (
        fuse(preset, combine_layers(preset, maps_a), dino_a),
        fuse(preset, combine_layers(preset, maps_b), dino_b),
    )
