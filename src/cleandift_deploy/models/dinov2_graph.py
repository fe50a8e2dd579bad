"""The manifest of a DINOv2 graph: what its ONNX export records and what its PyTorch reference
describes itself with (kind "pytorch")."""

from __future__ import annotations

from ..manifest import InputInfo, Manifest, TapInfo, package_versions
from .dinov2 import DINO_TAP, PATCH, DinoFeatures, LoadedDino
from .graph_shapes import ShapePlan

DINO_INPUT = InputInfo("image", "uint8", "NCHW", (0.0, 255.0), "letterbox", PATCH)
"""uint8 images, letterboxed to multiples of the patch size, normalised inside the graph."""


def dino_manifest(
    loaded: LoadedDino, module: DinoFeatures, plan: ShapePlan, precision: str, **build: object
) -> Manifest:
    """The manifest of a DINOv2 artifact (or of its PyTorch reference with kind="pytorch")."""
    return Manifest(
        kind="onnx",
        arch=loaded.arch,
        source=loaded.source,
        checkpoint_sha256=loaded.checkpoint_sha256,
        origin=dict(loaded.origin),
        taps=[TapInfo(DINO_TAP, module.channels, PATCH)],
        input=DINO_INPUT,
        batch=plan.batch,
        height=plan.height,
        width=plan.width,
        timestep=None,
        prompt=None,
        prompt_input=False,
        precision=precision,
        versions=package_versions(),
        build={"backbone": "dinov2", "layer": module.layer, "normalisation": "imagenet", **build},
    )
