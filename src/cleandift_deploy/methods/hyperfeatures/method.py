"""`eval pck --method hyperfeatures`: Diffusion Hyperfeatures as an evaluation method.

With `--model hf.onnx` (or a built engine) the exported one-step graph runs in the runtime and is
matched exactly like any artifact tap (the "features" method on its `hyperfeatures` output). Without
an artifact, `--checkpoint aggregator.safetensors` runs in PyTorch: the UNet maps of the variant the
network was trained with (one-step or multi-step, posterior sample or mean), through the feature
cache (`--cache`; the training run's cache is reused when given), then the aggregation network.
Matching as the reference: both maps bilinearly upsampled to the original image sizes, cosine,
argmax (computed exactly by `kernels` without building the upsampled maps), or window soft-argmax.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import CleanDiftError
from ...eval.protocol import Method, MethodOptions, PairSample
from ..catalog import SOFTMAX_BETA, WINDOW_RADIUS
from .graph import OUTPUT

FEATURES_KEPT = 4
"""Aggregated maps kept in memory (pairs sharing a target reuse it)."""


class TorchHyperfeatures:
    """The PyTorch method: cached UNet maps -> aggregation network -> cosine matching."""

    name = "hyperfeatures"

    def __init__(self, options: MethodOptions) -> None:
        from ...eval.cache import FeatureCache
        from .checkpoint import load_aggregator, unet_for
        from .extract import ExtractSettings, UNetMaps
        from .schedule import get_variant
        from .train import MapStore

        if options.checkpoint is None:
            raise CleanDiftError(
                "--method hyperfeatures needs --checkpoint aggregator.safetensors "
                "(from train-hyperfeatures) or --model hf.onnx (from export-hyperfeatures)"
            )
        if options.mode not in ("nn", "window-softargmax"):
            raise CleanDiftError(f"unknown --mode {options.mode!r}: use nn or window-softargmax")
        self.options = options
        self.network, self.info = load_aggregator(options.checkpoint)
        loaded = unet_for(self.info, options.source)
        settings = ExtractSettings(
            get_variant(self.info.variant), self.info.latent, self.info.image_size, options.seed
        )
        self.store = MapStore(UNetMaps(loaded, settings), FeatureCache(options.cache))
        self._features: OrderedDict[Path, torch.Tensor] = OrderedDict()

    def describe(self) -> dict[str, Any]:
        """Checkpoint, UNet, variant, timesteps, latent, size, matching and the prompt ("")."""
        info = self.info
        return {
            "method": self.name,
            "backend": "torch-cpu",
            "checkpoint": str(self.options.checkpoint),
            "unet": info.source,
            "unet_sha256": info.checkpoint_sha256,
            "variant": info.variant,
            "timesteps": list(info.timesteps),
            "latent": info.latent,
            "image_size": [info.image_size, info.image_size],
            "resize": "squash",
            "mode": self.options.mode,
            "upsample": "bilinear",
            "prompt": {"kind": "baked", "prompt": ""},
        }

    def features(self, image: Path) -> torch.Tensor:
        """`[384, h, w]` hyperfeatures of one image."""
        if image not in self._features:
            with torch.inference_mode():
                self._features[image] = self.network(self.store.get(image))[0]
            while len(self._features) > FEATURES_KEPT:
                self._features.popitem(last=False)
        self._features.move_to_end(image)
        return self._features[image]

    def predict(self, sample: PairSample) -> np.ndarray:
        """[K,2] predicted (x, y) in the target's original pixels."""
        from ...kernels import match_points

        if len(sample.source_points) == 0:
            return np.zeros((0, 2))
        matches = match_points(
            self.features(sample.source_path),
            self.features(sample.target_path),
            torch.from_numpy(_inside(sample.source_points, sample.source_size)),
            (sample.source_size[1], sample.source_size[0]),
            (sample.target_size[1], sample.target_size[0]),
            upsample="bilinear",
            mode=self.options.mode,
            radius=int(self.options.settings.get("radius", str(WINDOW_RADIUS))),
            beta=float(self.options.settings.get("beta", str(SOFTMAX_BETA))),
        )
        return matches.points.double().numpy()


def _inside(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(x, y) points clipped onto the image's pixel centres (annotations may sit on the edge)."""
    return np.clip(np.asarray(points, dtype=np.float32), 0, [size[0] - 1, size[1] - 1])


def build(options: MethodOptions) -> Method:
    """The artifact path (`--model`) or the PyTorch path (`--checkpoint`)."""
    if options.model is None:
        return TorchHyperfeatures(options)
    if options.backend.startswith("torch"):
        raise CleanDiftError(
            "a hyperfeature artifact has no rebuilt PyTorch reference: run it in onnxruntime / "
            "tensorrt, or give --checkpoint aggregator.safetensors (without --model) for PyTorch"
        )
    from ..features import FeaturesMethod

    method = FeaturesMethod(replace(options, tap=options.tap or OUTPUT))
    method.name = "hyperfeatures"
    return method
