"""The one-step hyperfeature graph: `image uint8 -> VAE mean -> UNet taps res0_0..res3_2 (t=-1)
-> aggregation network -> hyperfeatures [B,384,H/8,W/8]`, exported as ONE ONNX graph.

It is the exporter's own ExportGraph with the aggregation network as a head, so tracing, folding,
mixed fp16, the checker, the ONNX Runtime agreement check, the manifest and TensorRT builds are the
project's. The latent is the posterior MEAN (a graph has no sampling); train with `--latent mean`
for an exact match with the deployed graph.

The multi-step variant is not exported: it is 50 sequential full-UNet calls (DDIM inversion needs
each call's predicted noise) whose only purpose is a one-off feature extraction into the cache; a
runtime loop around an exported step graph would ship 50x the compute of the one-step graph for a
method that is not a latency path, so it stays PyTorch-only (`--method hyperfeatures` runs it).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ...manifest import Manifest, TapInfo
from ...models.graph_module import ExportGraph, GraphSpec, build_export_graph
from ...models.graph_options import ExportOptions
from ...models.loading import LoadedUNet
from ...models.taps import LATENT_STRIDE, RESNET_TAP_NAMES
from .aggregation import AggregationNetwork
from .checkpoint import AggregatorInfo
from .schedule import ONE_STEP

OUTPUT = "hyperfeatures"


class HyperfeatureGraph(ExportGraph):
    """ExportGraph over the 12 residual-branch taps with the aggregation network as its head."""

    def __init__(self, base: ExportGraph, aggregator: AggregationNetwork) -> None:
        if base.image_model is None:
            raise ValueError("the hyperfeature graph takes images: build it with the VAE")
        prompt = base.prompt_embeds if base.has_prompt else None
        super().__init__(base.features, base.image_model.vae_encoder, prompt)
        self.aggregator = aggregator.eval()

    @property
    def taps(self) -> tuple[str, ...]:
        """The one output."""
        return (OUTPUT,)

    def output_infos(self, unet_config: Mapping[str, Any]) -> list[TapInfo]:
        """`hyperfeatures`: projection_dim channels on the latent grid (stride 8)."""
        return [TapInfo(OUTPUT, self.aggregator.projection_dim, LATENT_STRIDE)]

    def forward(
        self, x: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """`(hyperfeatures,)` for a batch of uint8 images."""
        found = self.tapped(x, encoder_hidden_states)
        return (self.aggregator([found[name] for name in RESNET_TAP_NAMES]),)


def check_one_step(info: AggregatorInfo, loaded: LoadedUNet) -> None:
    """Refuse a multi-step network or one trained on another UNet."""
    from ...errors import CleanDiftError

    if info.variant != ONE_STEP.name:
        raise CleanDiftError(
            f"only the one-step variant exports as a graph; this network is {info.variant}: "
            "evaluate it with `eval pck --method hyperfeatures --checkpoint ...` (PyTorch)"
        )
    if info.checkpoint_sha256 != loaded.checkpoint_sha256:
        raise CleanDiftError(
            f"the aggregation network was trained on UNet {info.checkpoint_sha256[:12]}, not "
            f"{loaded.checkpoint_sha256[:12]}: give the UNet it was trained on"
        )


def export_options(options: ExportOptions) -> ExportOptions:
    """The caller's shape/precision options with the hyperfeature graph's fixed contract."""
    options.taps = RESNET_TAP_NAMES
    options.timestep = ONE_STEP.timesteps()[0]
    options.prompt = ""
    options.prompt_input = False
    options.vae = True
    options.noise = None
    options.freeu = None
    return options


def hyperfeature_spec(
    loaded: LoadedUNet,
    aggregator: AggregationNetwork,
    info: AggregatorInfo,
    options: ExportOptions,
    checkpoint: Path | None = None,
) -> GraphSpec:
    """The graph to trace (and its fp32 PyTorch reference) plus the head's provenance."""
    check_one_step(info, loaded)
    spec = build_export_graph(loaded, export_options(options))
    spec.module = HyperfeatureGraph(spec.module, aggregator).eval()
    spec.build = {
        "head": "hyperfeatures",
        "aggregator": None if checkpoint is None else str(checkpoint),
        "aggregator_step": info.step,
        "aggregator_latent": info.latent,
    }
    return spec


def is_hyperfeature_artifact(manifest: Manifest) -> bool:
    """Whether an artifact is a hyperfeature graph (its one output is `hyperfeatures`)."""
    return manifest.tap_names == (OUTPUT,)
