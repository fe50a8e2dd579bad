"""Export test helpers: an independent PyTorch reference (full diffusers UNet with hooks, VAE via
diffusers' own encode) and plain-numpy agreement figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from diffusers import AutoencoderKL
from model_helpers import hooked_taps

from cleandift_deploy.models.loading import LoadedUNet

FP32_COSINE, FP32_REL_L2 = 0.99999, 1e-4
FP16_COSINE = 0.999


@torch.no_grad()
def diffusers_latents(vae: AutoencoderKL, images: np.ndarray) -> torch.Tensor:
    """Scaled posterior mean of uint8 NCHW images, computed by diffusers itself."""
    pixels = torch.from_numpy(images).float() / 127.5 - 1.0
    return vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor


def reference_taps(
    loaded: LoadedUNet,
    latents: torch.Tensor,
    context: torch.Tensor,
    taps: tuple[str, ...],
    timestep: float = 261.0,
) -> dict[str, np.ndarray]:
    """Taps of the full UNet captured with hooks: independent of the export code."""
    found = hooked_taps(loaded.unet, latents, context, timestep, taps)
    return {name: found[name].numpy() for name in taps}


def run_onnx(path: Path, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
    """All outputs of the graph at `path` in ONNX Runtime (CPU)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def figures(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Cosine per position (mean, min), relative L2 and max abs error, in float64."""
    ref = reference.astype(np.float64)
    cand = candidate.astype(np.float64)
    dots = (ref * cand).sum(axis=1)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cosine = dots / np.maximum(norms, 1e-30)
    return {
        "cosine_mean": float(cosine.mean()),
        "cosine_min": float(cosine.min()),
        "relative_l2": float(np.linalg.norm(cand - ref) / np.linalg.norm(ref)),
        "max_abs": float(np.abs(cand - ref).max()),
    }


def assert_fp32_agreement(reference: np.ndarray, candidate: np.ndarray) -> None:
    """The fp32 thresholds of the issue, with the figures in the failure message."""
    assert candidate.shape == reference.shape
    found = figures(reference, candidate)
    assert found["cosine_min"] >= FP32_COSINE, found
    assert found["relative_l2"] <= FP32_REL_L2, found


def assert_fp16_agreement(reference: np.ndarray, candidate: np.ndarray) -> None:
    """The fp16 cosine threshold, and finite values everywhere."""
    assert candidate.shape == reference.shape
    assert np.isfinite(candidate).all()
    found = figures(reference, candidate)
    assert found["cosine_mean"] >= FP16_COSINE, found
    assert found["relative_l2"] <= 0.05, found


def random_images(batch: int, height: int, width: int) -> np.ndarray:
    """Fresh random uint8 images [B,3,H,W] from torch's (per-test seeded) generator."""
    return torch.randint(0, 256, (batch, 3, height, width), dtype=torch.uint8).numpy()


def run_cli(args: list[str]) -> int:
    """Run `cleandift-deploy ARGS` in-process; the exit status (0 when it returns normally)."""
    from cleandift_deploy.cli import main

    try:
        main(args)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0
