"""The default method "features": one artifact, one tap, exact-upsampled cosine matching.

Each image's features come from the feature cache (extracted once per image), the target's
matching field (norms and bounds of the upsampled map) is prepared once and reused by every pair
that shares the target, and `kernels` match the source points exactly as DIFT's
upsample-to-original-size argmax would (or by window soft-argmax, as GeoAware-SC / CleanDIFT).
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import CleanDiftError
from ..eval.cache import FeatureCache
from ..eval.grid import MatchGrid, match_grid
from ..eval.protocol import MethodOptions, PairSample
from ..manifest import is_random_source
from ..models.taps import DEFAULT_TAP
from ..values import parse_size as parse_image_size
from .catalog import SOFTMAX_BETA, WINDOW_RADIUS

if TYPE_CHECKING:
    from ..kernels.target_field import TargetField
    from ..manifest import Manifest
    from ..runtime.extractor import FeatureExtractor

PROMPT_TEMPLATE = "a photo of a {category}"
TARGET_FIELDS = 4
"""Prepared targets kept at once (pairs are evaluated grouped by target)."""


def open_extractor(options: MethodOptions) -> FeatureExtractor:
    """The artifact in any runtime backend (`--backend torch`: its PyTorch reference), or a
    PyTorch model straight from `--source` / `--arch --random-init`."""
    from ..runtime.extractor import FeatureExtractor

    size = parse_size(options.settings.get("size"))
    resize = options.settings.get("resize")
    if options.model is not None:
        taps = None if options.tap is None else [options.tap]
        return FeatureExtractor.load(
            options.model,
            backend=options.backend,
            taps=taps,
            image_size=size,
            resize=resize,
            **options.precision.load_options(),
        )
    if options.source is None and not options.random_init:
        raise CleanDiftError("the features method needs --model ARTIFACT (or --source / --arch)")
    return FeatureExtractor.from_source(
        options.source,
        arch=options.arch,
        random_init=options.random_init,
        seed=options.seed,
        taps=(options.tap or DEFAULT_TAP,),
        image_size=size,
        resize=resize or "squash",
    )


def parse_size(value: str | None) -> tuple[int, int] | None:
    """`--set size=768` or `size=512x768` (H x W) as (H, W)."""
    if value is None:
        return None
    return parse_image_size(value, "--set size")


def choose_tap(manifest: Manifest, tap: str | None) -> str:
    """`tap`, else us6 when the model has it, else its last tap."""
    names = manifest.tap_names
    if tap is None:
        return DEFAULT_TAP if DEFAULT_TAP in names else names[-1]
    if tap not in names:
        raise CleanDiftError(f"the model has no tap {tap!r}: use one of {', '.join(names)}")
    return tap


class Prompts:
    """The prompt embedding per category when the model takes one as input, else nothing."""

    def __init__(self, manifest: Manifest, options: MethodOptions) -> None:
        self.manifest = manifest
        self.takes_input = manifest.prompt_input
        self.encoder_root = options.settings.get("text_encoder") or options.source
        self._embeddings: dict[str, torch.Tensor] = {}
        self._encoder: Any = None

    def describe(self) -> dict[str, Any]:
        """What results.json says about the prompt."""
        if self.takes_input:
            return {"kind": "per-category", "template": PROMPT_TEMPLATE}
        return {"kind": "baked", "prompt": self.manifest.prompt}

    def text(self, category: str) -> str:
        """The prompt the features of an image of `category` are computed with."""
        if self.takes_input:
            return PROMPT_TEMPLATE.format(category=category)
        return f"baked:{self.manifest.prompt}"

    def embedding(self, category: str) -> torch.Tensor | None:
        """`[1, 77, D]` for "a photo of a {category}", or None for a baked prompt."""
        if not self.takes_input:
            return None
        text = self.text(category)
        if text not in self._embeddings:
            self._embeddings[text] = self._encode(text)
        return self._embeddings[text]

    def _encode(self, text: str) -> torch.Tensor:
        from ..models.prompt import PromptEncoder, random_prompt_embedding

        if is_random_source(self.manifest.source):
            # Random weights have no text encoder: a fixed random embedding per prompt text.
            return random_prompt_embedding(self.manifest.arch, zlib.crc32(text.encode()))
        root = Path(self.encoder_root or self.manifest.source)
        if self._encoder is None:
            folders = [root, root.parent]
            found = next((f for f in folders if (f / "text_encoder").is_dir()), None)
            if found is None:
                raise CleanDiftError(
                    f"the model takes a prompt input but no text_encoder/ is in {root}: "
                    "pass --set text_encoder=PIPELINE_FOLDER"
                )
            self._encoder = PromptEncoder(found)
        return self._encoder([text])


class FeaturesMethod:
    """Artifact features + `kernels` query matching, mapped back to original target pixels."""

    name = "features"

    def __init__(self, options: MethodOptions, extractor: FeatureExtractor | None = None) -> None:
        """`extractor`: one already open (else `open_extractor(options)` opens it)."""
        if options.mode not in ("nn", "window-softargmax"):
            raise CleanDiftError(f"unknown --mode {options.mode!r}: use nn or window-softargmax")
        self.options = options
        self.extractor = extractor or open_extractor(options)
        self.tap = choose_tap(self.extractor.manifest, options.tap)
        self.prompts = Prompts(self.extractor.manifest, options)
        self.cache = FeatureCache(options.cache)
        self.radius = int(options.settings.get("radius", str(WINDOW_RADIUS)))
        self.beta = float(options.settings.get("beta", str(SOFTMAX_BETA)))
        self._targets: OrderedDict[tuple[Path, str], tuple[TargetField, MatchGrid]] = OrderedDict()

    def describe(self) -> dict[str, Any]:
        """Artifact, manifest hash, backend, tap, size, matching settings and the prompt."""
        return {
            "method": self.name,
            "artifact": None if self.options.model is None else str(self.options.model),
            "source": None if self.options.source is None else str(self.options.source),
            "manifest_sha256": self.extractor.manifest_sha256,
            "backend": self.extractor.backend_name,
            "selection": self.extractor.selection.as_dict(),
            "tap": self.tap,
            "image_size": list(self.extractor.image_size),
            "resize": self.extractor.resize,
            "mode": self.options.mode,
            "upsample": "bilinear",
            **({"radius": self.radius, "beta": self.beta} if self._soft else {}),
            "prompt": self.prompts.describe(),
        }

    @property
    def _soft(self) -> bool:
        return self.options.mode == "window-softargmax"

    def grid(self, image: Path, category: str) -> MatchGrid:
        """The image's map (from the cache) on its matching grid."""
        parts = {
            "manifest": self.extractor.manifest_sha256,
            "backend": self.extractor.backend_name,
            "tap": self.tap,
            "size": "x".join(map(str, self.extractor.image_size)),
            "resize": self.extractor.resize,
            "prompt": self.prompts.text(category),
        }
        stored = self.cache.get_or_compute(parts, image, lambda: self._extract(image, category))
        original = (int(stored["original"][0]), int(stored["original"][1]))
        content = (int(stored["content"][0]), int(stored["content"][1]))
        offset = (
            (int(stored["offset"][0]), int(stored["offset"][1])) if "offset" in stored else (0, 0)
        )
        canvas = self.extractor.image_size
        return match_grid(
            stored["features"], canvas, original, content, self.extractor.resize, offset
        )

    def _extract(self, image: Path, category: str) -> dict[str, torch.Tensor]:
        from ..runtime.images import read_image

        with torch.inference_mode():
            result = self.extractor.extract([read_image(image)], self.prompts.embedding(category))
        placement = result.placements[0]
        return {
            "features": result.taps[self.tap][0].contiguous(),
            "original": torch.tensor(placement.original),
            "content": torch.tensor(placement.content),
            "offset": torch.tensor(placement.offset),
        }

    def _target(self, sample: PairSample) -> tuple[TargetField, MatchGrid]:
        from ..kernels.target_field import prepare_target

        key = (sample.target_path, sample.category)
        if key not in self._targets:
            grid = self.grid(sample.target_path, sample.category)
            field = prepare_target(grid.features, grid.size, "bilinear")
            self._targets[key] = (field, grid)
            while len(self._targets) > TARGET_FIELDS:
                self._targets.popitem(last=False)
        self._targets.move_to_end(key)
        return self._targets[key]

    def predict(self, sample: PairSample) -> np.ndarray:
        """[K,2] predicted (x, y) in the target's original pixels."""
        if len(sample.source_points) == 0:
            return np.zeros((0, 2))
        field, target = self._target(sample)
        source = self.grid(sample.source_path, sample.category)
        return match_into(
            field, target, source, sample.source_points, self.options.mode, self.radius, self.beta
        )


def match_into(
    field: TargetField,
    target: MatchGrid,
    source: MatchGrid,
    points: np.ndarray,
    mode: str = "nn",
    radius: int = 5,
    beta: float = 0.02,
) -> np.ndarray:
    """Source points (original pixels) matched into a target prepared once by
    `prepare_target(target.features, target.size, "bilinear")`; [K,2] original target pixels."""
    from ..kernels.query import match_prepared, source_vectors

    on_grid = torch.from_numpy(source.to_grid(np.asarray(points, dtype=np.float64)))
    with torch.inference_mode():
        queries = source_vectors(source.features, on_grid, source.size, "bilinear")
        matches = match_prepared(field, queries, target.size, mode=mode, radius=radius, beta=beta)
    return target.from_grid(matches.points.double().numpy())
