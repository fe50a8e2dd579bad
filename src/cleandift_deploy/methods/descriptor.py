"""The "descriptor" method: a descriptor preset (dift, cleandift, sd-dino, geoaware) over an SD
artifact and, for fusion presets, a DINOv2 artifact (`--model sd.onnx --dino dino.onnx`), or
their PyTorch references (`--backend torch`, or `--source` / `--arch --random-init`).

Each image's RAW features (the preset's SD taps and the DINO map, with placements) come from the
feature cache. The sd-dino descriptor itself is NOT cacheable per image: its co-PCA is fitted on
the two images of each pair, so it is recomputed for every pair (as the reference does); with
`--set pca_bases=FILE` (bases fitted once, `descriptors.save_bases`) it is per image again.

`--set` keys: `sd_size`, `dino_size` (px), `pca=svd|lowrank` (exact or sd-dino's randomised
co-PCA), `pca_bases=FILE`, `mode=nn|window-softargmax` (default: the preset's), `radius`, `beta`,
`dino_arch=NAME` / `dino_source=PATH` (PyTorch DINOv2 without an artifact), `text_encoder`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import CleanDiftError
from ..eval.cache import FeatureCache
from ..eval.protocol import MethodOptions, PairSample
from .catalog import SOFTMAX_BETA, WINDOW_RADIUS
from .features import Prompts

if TYPE_CHECKING:
    from ..descriptors import Preset
    from ..runtime.extractor import FeatureExtractor
    from ..runtime.fusion import ImageFeatures


def _sd_extractor(options: MethodOptions, preset: Preset, size: int | None) -> FeatureExtractor:
    from ..runtime.extractor import FeatureExtractor
    from ..runtime.fusion import size_within
    from ..runtime.torch_reference import ReferenceSpec

    if options.model is not None:
        from ..manifest import artifact_manifest

        manifest = artifact_manifest(options.model)
        side = size_within(manifest, size or preset.sd_size, manifest.input.multiple)
        return FeatureExtractor.load(
            options.model, options.backend, taps=preset.sd_taps, image_size=side,
            resize=preset.sd_resize,
        )  # fmt: skip
    if options.source is None and not options.random_init:
        raise CleanDiftError("the descriptor method needs --model SD_ARTIFACT (or --source)")
    side_px = size or preset.sd_size
    return FeatureExtractor.from_source(
        options.source, arch=options.arch, random_init=options.random_init, seed=options.seed,
        spec=ReferenceSpec(taps=preset.sd_taps), image_size=(side_px, side_px),
        resize=preset.sd_resize,
    )  # fmt: skip


def _dino_extractor(options: MethodOptions, size: int | None) -> FeatureExtractor:
    from ..manifest import artifact_manifest
    from ..models.dinov2 import PATCH, default_dino_size, resolve_dino
    from ..runtime.extractor import FeatureExtractor
    from ..runtime.fusion import size_within
    from ..runtime.torch_reference import build_dino_reference

    if options.dino is not None:
        manifest = artifact_manifest(options.dino)
        side = size_within(manifest, size or default_dino_size(manifest.arch), PATCH)
        return FeatureExtractor.load(options.dino, options.backend, image_size=side)
    arch, source = options.settings.get("dino_arch"), options.settings.get("dino_source")
    if arch is None and source is None:
        raise CleanDiftError(
            "this preset fuses DINOv2: pass --dino DINO_ARTIFACT "
            "(or --set dino_source=WEIGHTS / --set dino_arch=NAME with --random-init)"
        )
    loaded = resolve_dino(source, arch=arch, random_init=source is None, seed=options.seed)
    backend, manifest = build_dino_reference(loaded, image_size=size)
    return FeatureExtractor(backend, manifest, resize="letterbox")


def _placement_tensor(placement: Any) -> torch.Tensor:
    """original (H, W), content (H, W), offset (top, left) as one int tensor, for the cache."""
    return torch.tensor([*placement.original, *placement.content, *placement.offset])


def _placement(values: torch.Tensor) -> Any:
    from ..runtime.preprocess import Placement

    v = [int(x) for x in values.tolist()]
    return Placement((v[0], v[1]), (v[2], v[3]), (v[4], v[5]))


class DescriptorMethod:
    """A descriptor preset over one or two models, matched by the preset's rule."""

    name = "descriptor"

    def __init__(self, options: MethodOptions) -> None:
        from ..descriptors import load_bases
        from ..runtime.fusion import FusionExtractor
        from .catalog import get_preset

        if options.descriptor is None:
            raise CleanDiftError("the descriptor method needs --descriptor PRESET")
        settings = options.settings
        self.options = options
        self.preset = get_preset(options.descriptor)
        sd_size, dino_size = (_int_setting(settings, k) for k in ("sd_size", "dino_size"))
        sd = _sd_extractor(options, self.preset, sd_size)
        dino = _dino_extractor(options, dino_size) if self.preset.dino else None
        bases_path = settings.get("pca_bases")
        bases = None if bases_path is None else load_bases(Path(bases_path))
        self.pca = settings.get("pca", "svd")
        self.fusion = FusionExtractor(self.preset, sd, dino, bases=bases, pca_method=self.pca)
        self.mode = settings.get("mode", self.preset.mode)
        self.prompts = Prompts(sd.manifest, options)
        self.cache = FeatureCache(options.cache)

    def describe(self) -> dict[str, Any]:
        """Preset, models (paths, manifest hashes, backends, sizes), PCA and matching settings."""
        sd, dino = self.fusion.sd, self.fusion.dino
        return {
            "method": self.name,
            "preset": self.preset.name,
            "sd": {
                **_model_record(self.options.model, sd),
                "timestep": sd.manifest.timestep,
                "noise": sd.manifest.noise,
                "freeu": sd.manifest.freeu,
            },
            "dino": None if dino is None else _model_record(self.options.dino, dino),
            "pca": None
            if self.preset.pca_dims is None
            else {
                "dims": self.preset.pca_dims,
                "fit": "per pair (co-PCA)" if self.fusion.bases is None else "fitted bases",
                "method": self.pca,
                "cache": "raw features per image; co-PCA is per pair and not cached"
                if self.fusion.bases is None
                else "raw features per image",
            },
            "weights": list(self.preset.weights) if self.preset.dino else None,
            "mode": self.mode,
            "grid": self.preset.grid,
            "prompt": self.prompts.describe(),
        }

    def features(self, image: Path, category: str) -> ImageFeatures:
        """Raw features of one image, from the cache when there."""
        from ..runtime.fusion import ImageFeatures

        parts = {
            "method": self.name,
            "taps": ",".join(self.preset.sd_taps),
            "sd": self.fusion.sd.manifest_sha256,
            "sd_backend": self.fusion.sd.backend_name,
            "sd_size": "x".join(map(str, self.fusion.sd.image_size)),
            "sd_resize": self.fusion.sd.resize,
            "prompt": self.prompts.text(category),
        }
        dino = self.fusion.dino
        if dino is not None:
            parts.update(
                dino=dino.manifest_sha256,
                dino_backend=dino.backend_name,
                dino_size="x".join(map(str, dino.image_size)),
            )
        stored = self.cache.get_or_compute(parts, image, lambda: self._extract(image, category))
        return ImageFeatures(
            sd={t: stored[f"sd.{t}"] for t in self.preset.sd_taps},
            sd_placement=_placement(stored["sd_placement"]),
            sd_canvas=self.fusion.sd.image_size,
            dino=stored.get("dino"),
            dino_placement=None if dino is None else _placement(stored["dino_placement"]),
            dino_canvas=None if dino is None else dino.image_size,
        )

    def _extract(self, image: Path, category: str) -> dict[str, torch.Tensor]:
        from ..runtime.images import read_image

        with torch.inference_mode():
            found = self.fusion.features(read_image(image), self.prompts.embedding(category))
        stored = {f"sd.{t}": v.contiguous() for t, v in found.sd.items()}
        stored["sd_placement"] = _placement_tensor(found.sd_placement)
        if found.dino is not None:
            stored["dino"] = found.dino.contiguous()
            stored["dino_placement"] = _placement_tensor(found.dino_placement)
        return stored

    def predict(self, sample: PairSample) -> np.ndarray:
        """[K,2] predicted (x, y) in the target's original pixels."""
        from ..runtime.fusion import PairDescriptors, match_in_original

        if len(sample.source_points) == 0:
            return np.zeros((0, 2))
        source = self.features(sample.source_path, sample.category)
        target = self.features(sample.target_path, sample.category)
        with torch.inference_mode():
            da, db = self.fusion.pair(source, target)
            pair = PairDescriptors(da, db, source, target, {})
            points = torch.from_numpy(np.asarray(sample.source_points, dtype=np.float64))
            found = match_in_original(self.preset, pair, points, self.mode, *self._soft())
        return found.numpy()

    def _soft(self) -> tuple[int, float]:
        settings = self.options.settings
        return int(settings.get("radius", str(WINDOW_RADIUS))), float(
            settings.get("beta", str(SOFTMAX_BETA))
        )


def _int_setting(settings: dict[str, str], key: str) -> int | None:
    value = settings.get(key)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise CleanDiftError(f"--set {key}={value} is not a whole number of pixels") from None


def _model_record(path: Path | None, extractor: FeatureExtractor) -> dict[str, Any]:
    return {
        "artifact": None if path is None else str(path),
        "arch": extractor.manifest.arch,
        "manifest_sha256": extractor.manifest_sha256,
        "backend": extractor.backend_name,
        "image_size": list(extractor.image_size),
        "resize": extractor.resize,
    }


def build(options: MethodOptions) -> DescriptorMethod:
    """The registered factory."""
    return DescriptorMethod(options)
