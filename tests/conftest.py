"""Shared test set-up: offline hub, small model fixtures."""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator

os.environ["HF_HUB_OFFLINE"] = "1"
# `auto` times ONNX Runtime against OpenVINO on first use of each artifact; the tests pin it (the
# engine-choice tests unset this and measure).
os.environ.setdefault("CLEANDIFT_CPU_ENGINE", "onnxruntime")

import pytest
import torch

if not torch.cuda.is_available():
    # Triton kernels run on CPU tensors through the interpreter; on a GPU they are compiled.
    os.environ.setdefault("TRITON_INTERPRET", "1")

from train_helpers import one_thread

from cleandift_deploy.models import random_unet
from cleandift_deploy.models.loading import LoadedUNet


@pytest.fixture(autouse=True)
def _fresh_seed(request: pytest.FixtureRequest) -> None:
    """A different but reproducible seed per test: inputs are fresh, failures re-run the same."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def single_thread() -> Iterator[None]:
    """torch on one thread for a test of small tensors (`pytestmark = usefixtures(...)`)."""
    yield from one_thread()


@pytest.fixture(scope="session")
def tiny() -> LoadedUNet:
    """The tiny architecture with random weights (shared, read-only)."""
    return random_unet("tiny", seed=1)
