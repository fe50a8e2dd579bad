"""Shared pieces of the runtime tests: tiny exported artifacts, random images, agreement figures."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import torch

from cleandift_deploy.export.exporter import export_onnx
from cleandift_deploy.manifest import InputInfo, Manifest, ShapeRange, TapInfo
from cleandift_deploy.models.graph_options import ExportOptions
from cleandift_deploy.models.loading import LoadedUNet

TINY_TAPS = ("us3", "us6")


def export_tiny(loaded: LoadedUNet, out: Path, **options: object) -> Path:
    """Export the tiny model to `out` (agreement check skipped: the tests measure it)."""
    settings: dict[str, object] = {"taps": TINY_TAPS, "check_agreement": False, **options}
    export_onnx(loaded, out, ExportOptions(**settings))  # type: ignore[arg-type]
    return out


def random_rgb(height: int, width: int, generator: np.random.Generator) -> np.ndarray:
    """A fresh uint8 [H, W, 3] image: smooth structure plus noise, never constant."""
    coarse = generator.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3))
    rows = np.linspace(0, coarse.shape[0] - 1, height).round().astype(int)
    cols = np.linspace(0, coarse.shape[1] - 1, width).round().astype(int)
    smooth = coarse[rows][:, cols].astype(np.int16)
    noisy = smooth + generator.integers(-20, 21, (height, width, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def agreement(reference: torch.Tensor, candidate: torch.Tensor) -> dict[str, float]:
    """Worst per-position cosine, max abs error and relative L2 error of two [B, C, h, w] maps."""
    cosine = torch.nn.functional.cosine_similarity(reference.double(), candidate.double(), dim=1)
    difference = (reference.double() - candidate.double()).norm() / reference.double().norm()
    return {
        "cosine_min": float(cosine.min()),
        "max_abs": float((reference - candidate).abs().max()),
        "relative_l2": float(difference),
    }


def _fix_defaults(match: re.Match[str]) -> str:
    """Give later parameters `= ...` once one has a default (the stub generator forgot some)."""
    line = match.group(0)
    head, _, rest = line.partition("(")
    params, _, tail = rest.rpartition(")")
    seen_default = False
    fixed = []
    for part in params.split(", "):
        if "=" in part:
            seen_default = True
        elif seen_default and ":" in part and not part.lstrip().startswith("*"):
            part += " = ..."
        fixed.append(part)
    return f"{head}({', '.join(fixed)}){tail}"


def repaired_tensorrt_stubs(site_packages: Path, target: Path) -> Path:
    """A copy of tensorrt-stubs that mypy can parse, returned as a MYPYPATH entry.

    tensorrt-stubs 10.13 installs `tensorrt/__init__.pyi` without `py.typed` (so mypy ignores it
    unless it is on MYPYPATH) and has two syntax slips: parameters named `in` and a parameter
    without a default after defaulted ones. Only those are repaired; every signature is kept.
    """
    for package in ("tensorrt", "tensorrt_bindings"):
        shutil.copytree(site_packages / package, target / package, dirs_exist_ok=True)
    bindings = target / "tensorrt_bindings" / "tensorrt.pyi"
    text = re.sub(r"([(,]\s*)in(\s*:)", r"\1in_\2", bindings.read_text())
    text = re.sub(r"^\s*def .*$", _fix_defaults, text, flags=re.MULTILINE)
    bindings.write_text(text)
    return target


def engine_manifest(**target: object) -> Manifest:
    """A TensorRT engine's manifest for tests that need no engine file (tiny, fp16, batch 1-4,
    64-128 px); `target` fields go into its target record (runtime "tensorrt" by default)."""
    return Manifest(
        kind="engine",
        arch="tiny",
        source="random-init:tiny",
        checkpoint_sha256="random-init-seed1",
        taps=[TapInfo("us6", 64, 16)],
        input=InputInfo(),
        batch=ShapeRange(1, 1, 4),
        height=ShapeRange(64, 64, 128),
        width=ShapeRange(64, 64, 128),
        timestep=261.0,
        prompt="",
        prompt_input=False,
        precision="fp16",
        versions={"tensorrt": "10.13.0.35"},
        target={"runtime": "tensorrt", **target},
    )
