"""The PyTorch reference: the exporter's own graph module, built from a model source.

For comparison with an artifact it is built from the artifact's manifest (same taps, timestep,
prompt and input contract), after checking that the checkpoint is the one the artifact came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..manifest import Manifest, ShapeRange, package_versions
from ..models import tap_infos
from ..models.configs import default_image_size
from ..models.dinov2 import PATCH, DinoFeatures, LoadedDino, default_dino_size
from ..models.freeu import FreeU
from ..models.graph_module import build_export_graph, input_info
from ..models.graph_options import ExportOptions
from ..models.loading import LoadedUNet
from ..models.noise import NoiseSpec
from ..models.provenance import (
    Recorded,
    check_same_weights,
    options_like,
    reload_unet,
    with_probe_of,
)
from ..models.taps import DEFAULT_TAP
from .torch_backend import TorchBackend

UNBOUNDED_BATCH = 1 << 16
MAX_SIDE = 8192
"""PyTorch takes any multiple of 64 up to this side; artifacts have their exported ranges."""


@dataclass
class ReferenceSpec:
    """What the reference computes: the fields of an export that shape its graph."""

    taps: tuple[str, ...] = (DEFAULT_TAP,)
    timestep: float | None = None
    prompt: str = ""
    prompt_input: bool = False
    vae: bool = True
    noise: NoiseSpec | None = None
    freeu: FreeU | None = None
    probe: dict[str, Any] = field(default_factory=dict)
    """A probe head's manifest record (`build.head` and `build.probe`); empty: none."""

    @classmethod
    def like(cls, manifest: Manifest) -> ReferenceSpec:
        """The spec that reproduces an artifact's graph in PyTorch (read by `options_like`)."""
        options = options_like(manifest)
        return cls(
            taps=options.taps,
            timestep=options.timestep,
            prompt=options.prompt,
            prompt_input=options.prompt_input,
            vae=options.vae,
            noise=options.noise,
            freeu=options.freeu,
            probe={k: manifest.build[k] for k in ("head", "probe") if k in manifest.build}
            if "probe" in manifest.build
            else {},
        )


def source_of(manifest: Manifest) -> LoadedUNet:
    """Reload the checkpoint an artifact was exported from, refusing a different one."""
    return reload_unet(Recorded.of(manifest))


def check_same_checkpoint(loaded: LoadedUNet, manifest: Manifest) -> None:
    """The reference must run the weights the artifact was made from."""
    check_same_weights(loaded, Recorded.of(manifest))


def reference_manifest(loaded: LoadedUNet, spec: ReferenceSpec, timestep: float) -> Manifest:
    """A manifest describing the PyTorch reference, so the extractor treats it like an artifact."""
    default = default_image_size(loaded.arch)
    return Manifest(
        kind="pytorch",
        arch=loaded.arch,
        source=loaded.source,
        checkpoint_sha256=loaded.checkpoint_sha256,
        origin=dict(loaded.origin),
        taps=tap_infos(loaded.unet.config, spec.taps),
        input=input_info(spec.vae),
        batch=ShapeRange(1, 1, UNBOUNDED_BATCH),
        height=ShapeRange(64, default, MAX_SIDE),
        width=ShapeRange(64, default, MAX_SIDE),
        timestep=timestep,
        prompt=None if spec.prompt_input else spec.prompt,
        prompt_input=spec.prompt_input,
        precision="fp32",
        versions=package_versions(),
        noise={} if spec.noise is None else spec.noise.record(),
        freeu={} if spec.freeu is None else spec.freeu.record(),
    )


def build_reference(
    loaded: LoadedUNet, spec: ReferenceSpec, device: str = "cpu", precision: str = "fp32"
) -> tuple[TorchBackend, Manifest]:
    """The reference backend for `spec` and the manifest that describes it."""
    options = ExportOptions(
        taps=spec.taps,
        timestep=spec.timestep,
        prompt=spec.prompt,
        prompt_input=spec.prompt_input,
        vae=spec.vae,
        noise=spec.noise,
        freeu=spec.freeu,
        check_agreement=False,
    )
    graph = with_probe_of(build_export_graph(loaded, options), loaded, spec.probe)
    module = graph.module
    manifest = reference_manifest(loaded, spec, graph.timestep)
    if spec.probe:
        manifest.taps = module.output_infos(loaded.unet.config)
        manifest.build = dict(spec.probe)
    backend = TorchBackend(module, module.input_names, module.taps, device, precision)
    return backend, manifest


def build_dino_reference(
    loaded: LoadedDino,
    layer: int | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    image_size: int | None = None,
) -> tuple[TorchBackend, Manifest]:
    """A DINOv2 backbone as a PyTorch backend and the manifest that describes it: any multiple
    of 14 up to MAX_SIDE, `image_size` (default: the arch's, 840 px) as the default side."""
    from ..models.dinov2_graph import dino_manifest
    from ..models.graph_shapes import ShapePlan

    module = DinoFeatures(loaded, layer).eval()
    side = image_size or default_dino_size(loaded.arch)
    limit = MAX_SIDE // PATCH * PATCH
    plan = ShapePlan(
        ShapeRange(1, 1, UNBOUNDED_BATCH),
        ShapeRange(PATCH, side, limit),
        ShapeRange(PATCH, side, limit),
    )
    manifest = dino_manifest(loaded, module, plan, "fp32")
    manifest.kind = "pytorch"
    backend = TorchBackend(module, module.input_names, module.taps, device, precision)
    return backend, manifest
