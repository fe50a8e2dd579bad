"""SD + DINOv2 fusion at run time: two artifacts on the same images, one descriptor out.

`FusionExtractor` runs the SD artifact (at the preset's size and resize policy, e.g. 960 px
letterboxed for sd-dino / GeoAware, 768 px squashed for DIFT) and, for fusion presets, the
DINOv2 artifact (840 px letterboxed), then assembles the preset's descriptor with the pure
functions of `cleandift_deploy.descriptors`. It keeps where each image sits on each canvas, so
matches on the descriptor grid map back to original pixels, and it times each stage.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..descriptors import PcaBasis, Preset, describe, describe_pair
from ..errors import CleanDiftError
from ..manifest import Manifest, artifact_manifest
from .extractor import FeatureExtractor
from .preprocess import ImageInput, Placement

STAGES = ("sd", "dino", "descriptor")


@dataclass
class ImageFeatures:
    """One image's raw features: SD taps and the DINO map ([C, h, w] each), and placements."""

    sd: dict[str, torch.Tensor]
    sd_placement: Placement
    sd_canvas: tuple[int, int]
    dino: torch.Tensor | None = None
    dino_placement: Placement | None = None
    dino_canvas: tuple[int, int] | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def grid_frame(self, preset: Preset) -> tuple[Placement, tuple[int, int]]:
        """The placement and canvas of the descriptor grid: DINO's when fused, else SD's."""
        if preset.dino:
            if self.dino_placement is None or self.dino_canvas is None:
                raise CleanDiftError(f"preset {preset.name} needs DINOv2 features")
            return self.dino_placement, self.dino_canvas
        return self.sd_placement, self.sd_canvas


def _scale(placement: Placement) -> tuple[float, float]:
    (oh, ow), (ch, cw) = placement.original, placement.content
    return ch / oh, cw / ow


def original_to_canvas(xy: torch.Tensor, placement: Placement) -> torch.Tensor:
    """(x, y) original pixels [K, 2] -> canvas pixels (pixel centres at integers)."""
    sy, sx = _scale(placement)
    top, left = placement.offset
    x = (xy[:, 0].double() + 0.5) * sx - 0.5 + left
    y = (xy[:, 1].double() + 0.5) * sy - 0.5 + top
    return torch.stack([x, y], dim=1)


def canvas_to_original(xy: torch.Tensor, placement: Placement) -> torch.Tensor:
    """(x, y) canvas pixels [K, 2] -> original pixels, clamped inside the original image."""
    sy, sx = _scale(placement)
    top, left = placement.offset
    height, width = placement.original
    x = ((xy[:, 0].double() - left + 0.5) / sx - 0.5).clamp(0, width - 1)
    y = ((xy[:, 1].double() - top + 0.5) / sy - 0.5).clamp(0, height - 1)
    return torch.stack([x, y], dim=1)


def size_within(manifest: Manifest, side: int, multiple: int) -> tuple[int, int]:
    """`side` when the artifact's range holds it, else the artifact's optimal size."""
    if side % multiple == 0 and manifest.height.contains(side) and manifest.width.contains(side):
        return side, side
    return manifest.height.opt, manifest.width.opt


class FusionExtractor:
    """Runs the SD (and DINOv2) extractors of a descriptor preset and assembles descriptors."""

    def __init__(
        self,
        preset: Preset,
        sd: FeatureExtractor,
        dino: FeatureExtractor | None = None,
        *,
        bases: Mapping[str, PcaBasis] | None = None,
        pca_method: str = "svd",
    ) -> None:
        self.preset = preset
        if self.preset.dino and dino is None:
            raise CleanDiftError(
                f"preset {self.preset.name} fuses DINOv2 features: give a DINOv2 model (--dino)"
            )
        self.sd = sd
        self.dino = dino if self.preset.dino else None
        self.bases = bases
        self.pca_method = pca_method

    @classmethod
    def load(
        cls,
        preset: Preset,
        model: str | Path,
        dino: str | Path | None = None,
        *,
        backend: str = "auto",
        sd_size: int | None = None,
        dino_size: int | None = None,
        bases: Mapping[str, PcaBasis] | None = None,
        pca_method: str = "svd",
    ) -> FusionExtractor:
        """Open the artifacts of a preset; sizes default to the preset's (960 / 840 px) when
        the artifact's range holds them, else to the artifact's optimal size."""
        spec = preset
        sd_manifest = artifact_manifest(Path(model))
        size = size_within(sd_manifest, sd_size or spec.sd_size, sd_manifest.input.multiple)
        sd = FeatureExtractor.load(
            model, backend, taps=spec.sd_taps, image_size=size, resize=spec.sd_resize
        )
        dino_extractor = None
        if spec.dino and dino is not None:
            dino_manifest = artifact_manifest(Path(dino))
            side = size_within(dino_manifest, dino_size or spec.dino_size, 14)
            dino_extractor = FeatureExtractor.load(dino, backend, image_size=side)
        return cls(spec, sd, dino_extractor, bases=bases, pca_method=pca_method)

    def features(
        self, image: ImageInput, encoder_hidden_states: torch.Tensor | None = None
    ) -> ImageFeatures:
        """The raw features of one image (with the prompt embedding when the SD model takes
        one), with each stage's seconds."""
        started = time.perf_counter()
        sd = self.sd.extract(image, encoder_hidden_states)
        found = ImageFeatures(
            sd={name: value[0] for name, value in sd.taps.items()},
            sd_placement=sd.placements[0],
            sd_canvas=self.sd.image_size,
        )
        found.seconds["sd"] = time.perf_counter() - started
        if self.dino is not None:
            started = time.perf_counter()
            dino = self.dino.extract(image)
            found.dino = next(iter(dino.taps.values()))[0]
            found.dino_placement = dino.placements[0]
            found.dino_canvas = self.dino.image_size
            found.seconds["dino"] = time.perf_counter() - started
        return found

    def descriptor(self, features: ImageFeatures) -> torch.Tensor:
        """One image's descriptor [D, h, w] (PCA presets need fitted bases)."""
        return describe(self.preset, features.sd, features.dino, self.bases)

    def pair(self, a: ImageFeatures, b: ImageFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """Descriptors of a pair: co-PCA for sd-dino without fitted bases, else per image."""
        if self.preset.pairwise and self.bases is None:
            return describe_pair(self.preset, a.sd, b.sd, a.dino, b.dino, self.pca_method)
        return self.descriptor(a), self.descriptor(b)

    def describe_images(self, source: ImageInput, target: ImageInput) -> PairDescriptors:
        """Both images end to end: descriptors, raw features and seconds per stage."""
        a, b = self.features(source), self.features(target)
        started = time.perf_counter()
        da, db = self.pair(a, b)
        seconds = {stage: a.seconds.get(stage, 0.0) + b.seconds.get(stage, 0.0) for stage in STAGES}
        seconds["descriptor"] = time.perf_counter() - started
        return PairDescriptors(da, db, a, b, seconds)

    def match(self, pair: PairDescriptors, points: torch.Tensor) -> torch.Tensor:
        """Source points (x, y) in original source pixels [K, 2] -> predicted target points in
        original target pixels, by the preset's matching rule."""
        return match_in_original(self.preset, pair, points)


@dataclass
class PairDescriptors:
    """The descriptors of a source and a target image, their raw features and stage seconds."""

    source: torch.Tensor
    target: torch.Tensor
    source_features: ImageFeatures
    target_features: ImageFeatures
    seconds: dict[str, float]


def _covers_image(placement: Placement, canvas: tuple[int, int]) -> bool:
    """Whether the image fills the whole canvas ("squash"): the map then covers the image."""
    return placement.offset == (0, 0) and placement.content == canvas


def match_in_original(
    preset: Preset,
    pair: PairDescriptors,
    points: torch.Tensor,
    mode: str | None = None,
    radius: int = 5,
    beta: float = 0.02,
) -> torch.Tensor:
    """Match on the descriptor grid and return target points in original target pixels.

    Squashed images (DIFT, CleanDIFT) are matched as their references do: maps bilinearly
    upsampled to the ORIGINAL image sizes. Letterboxed ones (sd-dino, GeoAware) are matched on
    the descriptor grid in the canvas frame (cell centres, `patch * 14 + 6.5` at 840 px) and the
    result is mapped back through the target's placement. `mode` defaults to the preset's;
    window soft-argmax uses `radius` cells and temperature `beta` (GeoAware: 5, 0.02).
    """
    from ..kernels import match_points

    src_place, src_canvas = pair.source_features.grid_frame(preset)
    tgt_place, tgt_canvas = pair.target_features.grid_frame(preset)
    upsample = "bilinear" if preset.grid == "image" else "none"

    def run(query: torch.Tensor, src: tuple[int, int], tgt: tuple[int, int]) -> torch.Tensor:
        found = match_points(
            pair.source, pair.target, query.float(), src, tgt,
            upsample=upsample, mode=mode or preset.mode, radius=radius, beta=beta,
        )  # fmt: skip
        return found.points.double()

    if _covers_image(src_place, src_canvas) and _covers_image(tgt_place, tgt_canvas):
        return run(points, src_place.original, tgt_place.original)
    canvas_points = original_to_canvas(points, src_place)
    canvas_points[:, 0].clamp_(0, src_canvas[1] - 1)
    canvas_points[:, 1].clamp_(0, src_canvas[0] - 1)
    return canvas_to_original(run(canvas_points, src_canvas, tgt_canvas), tgt_place)
