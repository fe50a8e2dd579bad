"""Runtime: `FeatureExtractor`, one API over the PyTorch, ONNX Runtime and TensorRT backends.

    from cleandift_deploy.runtime import FeatureExtractor
    extractor = FeatureExtractor.load("model.onnx")      # or .plan / .engine, backend="auto"
    features = extractor([pil_image, uint8_array])       # {"us6": [B, C, h, w] float32}

The names are imported on first use, so importing a submodule (e.g. `ort_session`) stays light.

May import: descriptors, models, kernels, manifest, atomic, values, errors; never export.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FeatureExtractor", "Features"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import extractor

        return getattr(extractor, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
