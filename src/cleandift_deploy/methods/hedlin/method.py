"""`--method hedlin` for `eval pck`: Hedlin et al. on a PyTorch SD model (`--source` or
`--arch NAME --random-init`), settings through `--set KEY=VALUE` (see `HedlinSettings`)."""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any

import numpy as np

from ...eval.protocol import MethodOptions, PairSample
from .settings import REFERENCE_SIZE, HedlinSettings, settings_from_strings


class HedlinMethod:
    """Optimises prompt embeddings on every pair's source keypoints and reads them out."""

    name = "hedlin"

    def __init__(self, options: MethodOptions) -> None:
        from ...models.configs import default_image_size
        from ...models.loading import load_vae, resolve_source
        from ...train.noising import noise_scheduler
        from .matcher import HedlinMatcher

        loaded = resolve_source(
            options.source, arch=options.arch, random_init=options.random_init, seed=options.seed
        )
        size = min(REFERENCE_SIZE, default_image_size(loaded.arch))
        defaults = HedlinSettings(size=size, seed=options.seed)
        self.settings = settings_from_strings(options.settings, defaults)
        vae = load_vae(loaded.root, loaded.arch, random_init=options.random_init, seed=options.seed)
        self.loaded = loaded
        self.matcher = HedlinMatcher(loaded.unet, vae, noise_scheduler(loaded.root), self.settings)

    def describe(self) -> dict[str, Any]:
        """Model source and hash, and every setting (the prompt is optimised, not given)."""
        settings = dataclasses.asdict(self.settings)
        settings["layers"] = [f"{b}.{a}" for b, a in self.settings.layers]
        return {
            "method": self.name,
            "source": self.loaded.source,
            "arch": self.loaded.arch,
            "checkpoint_sha256": self.loaded.checkpoint_sha256,
            "settings": settings,
            "prompt": "optimised per keypoint (5 x 77 token embeddings, random init)",
        }

    def predict(self, sample: PairSample) -> np.ndarray:
        """[K,2] target points in original target pixels; the random streams are keyed by the
        pair id, so a pair's result does not depend on which pairs ran before it."""
        from ...runtime.images import read_image

        source, target = read_image(sample.source_path), read_image(sample.target_path)
        if len(sample.source_points) == 0:
            return np.zeros((0, 2))
        stream = zlib.crc32(sample.pair_id.encode())
        return self.matcher.match(source, target, sample.source_points, stream=stream).points
