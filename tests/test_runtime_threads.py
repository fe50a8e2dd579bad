"""One FeatureExtractor used from several threads gives what serial use gives."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from runtime_helpers import TINY_TAPS, export_tiny, random_rgb

from cleandift_deploy.models.loading import LoadedUNet
from cleandift_deploy.runtime.extractor import FeatureExtractor

THREADS = 4
CALLS = 8


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_threads_match_serial(tiny: LoadedUNet, tmp_path: Path, backend: str) -> None:
    path = export_tiny(
        tiny, tmp_path / "tiny.onnx", size_range=((64, 64), (128, 128)), batch=(1, 1, 2)
    )
    extractor = FeatureExtractor.load(path, backend=backend)
    rng = np.random.default_rng(torch.initial_seed())
    requests = [
        [random_rgb(int(rng.integers(40, 160)), int(rng.integers(40, 160)), rng) for _ in range(n)]
        for n in rng.integers(1, 4, CALLS)
    ]
    serial = [extractor(images) for images in requests]
    with ThreadPoolExecutor(THREADS) as pool:
        parallel = list(pool.map(extractor, requests))
    distinct = {float(result["us6"].sum()) for result in serial}
    assert len(distinct) == CALLS, "requests must differ, or a mix-up between threads could hide"
    for want, got in zip(serial, parallel, strict=True):
        for tap in TINY_TAPS:
            assert torch.equal(want[tap], got[tap]), tap
