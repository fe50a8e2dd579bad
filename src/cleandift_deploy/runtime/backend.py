"""What every backend offers the FeatureExtractor: run one batch of named inputs, return taps.

Backends do no preprocessing, no batching and no checks of the request against the manifest: the
extractor does those once for all of them. `run` must be safe to call from several threads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch


class Backend(Protocol):
    """One way to run a feature model: PyTorch, ONNX Runtime or TensorRT."""

    name: str
    """Short name shown to users, e.g. "onnxruntime-cpu"."""
    device: torch.device
    """Where `run` wants its inputs and leaves its outputs."""

    def run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Tap tensors for one batch; inputs are keyed by graph input name."""
        ...
