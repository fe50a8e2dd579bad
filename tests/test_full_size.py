"""The full SD2.1 architecture with random weights (slow: about 3.5 GB)."""

from __future__ import annotations

import pytest
import torch

from cleandift_deploy.models import FeatureUNet, random_unet, tap_specs


@pytest.mark.slow
def test_sd21_random_init_builds_and_runs_to_us6() -> None:
    loaded = random_unet("sd21")
    assert sum(p.numel() for p in loaded.unet.parameters()) == 865_910_724
    model = FeatureUNet(loaded.unet, taps=("us3", "us6"))
    kept = sum(p.numel() for p in model.parameters())
    assert 770e6 < kept < 780e6
    with torch.no_grad():
        out = model(torch.randn(1, 4, 16, 24), torch.randn(1, 77, 1024))
    assert out["us6"].shape == (1, tap_specs(loaded.unet.config)["us6"].channels, 8, 12)
    assert torch.isfinite(out["us6"]).all() and out["us6"].std() > 0
