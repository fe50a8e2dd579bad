"""A probe head inside the exported graph: `image uint8 -> tap -> head -> bilinear to the input
size`, so one graph (and one engine) maps images to `depth` [B,1,H,W] in metres or class
`logits` [B,K,H,W].

It is the exporter's own ExportGraph with the probe as its head (as the hyperfeature graph), so
tracing, folding, mixed fp16, the checker, the agreement check, the manifest, `compare`, TensorRT
builds and the runtime's PyTorch backend all work unchanged. The manifest's `build.head` names the
task and `build.probe` the probe file, its sha256 and its record; the PyTorch reference reloads the
probe from there and checks the hash (`probe_of_manifest`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ..errors import CleanDiftError
from ..manifest import TapInfo
from . import tap_infos
from .graph_module import ExportGraph, GraphSpec, build_export_graph
from .graph_options import ExportOptions
from .loading import LoadedUNet
from .probe_heads import ProbeFile, ProbeOnFeatures, check_channels, probe_record


class ProbeGraph(ExportGraph):
    """ExportGraph over the probe's tap with the probe and the upsampling as its head."""

    def __init__(self, base: ExportGraph, probe_file: ProbeFile) -> None:
        if base.image_model is None:
            raise CleanDiftError("a probe graph takes images: export it with the VAE (no --no-vae)")
        prompt = base.prompt_embeds if base.has_prompt else None
        super().__init__(base.features, None, prompt)
        self.image_model = base.image_model  # keeps the base's noise, if any
        self.head = ProbeOnFeatures(probe_file.probe).eval()
        self.info = probe_file.info

    @property
    def taps(self) -> tuple[str, ...]:
        """The one output: `depth` or `logits`."""
        return (self.info.output,)

    def output_infos(self, unet_config: Mapping[str, Any]) -> list[TapInfo]:
        """The map at the input size (stride 1)."""
        return [TapInfo(self.info.output, self.info.output_channels, 1)]

    def forward(
        self, x: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """`(map,)` for a batch of uint8 images, at the images' size."""
        features = self.tapped(x, encoder_hidden_states)[self.info.tap]
        return (self.head(features, (x.shape[-2], x.shape[-1])),)


def with_probe(base: ExportGraph, loaded: LoadedUNet, probe_file: ProbeFile) -> ProbeGraph:
    """`base` (built with the probe's tap only) with the probe appended; refuses a probe whose
    channels differ from the tap's or that was trained on another checkpoint."""
    info = probe_file.info
    channels = tap_infos(loaded.unet.config, (info.tap,))[0].channels
    check_channels(info, channels, f"{loaded.arch} ({loaded.source})")
    trained_on = info.features.get("checkpoint_sha256")
    if trained_on and trained_on != loaded.checkpoint_sha256:
        raise CleanDiftError(
            f"the probe was trained on features of checkpoint {trained_on[:12]}, not "
            f"{loaded.checkpoint_sha256[:12]}: export it with the model it was trained on"
        )
    return ProbeGraph(base, probe_file).eval()


CLEANDIFT_PROMPT = "A photo of a room"
"""The prompt of CleanDIFT's depth probe (`src/depth.py`), for probe files without a record."""


def probe_prompt(probe_file: ProbeFile) -> str:
    """The prompt the probe's features were made with (CleanDIFT's for its released file)."""
    recorded = probe_file.info.features.get("prompt")
    return CLEANDIFT_PROMPT if recorded is None else str(recorded)


def probe_spec(loaded: LoadedUNet, probe_file: ProbeFile, options: ExportOptions) -> GraphSpec:
    """The graph to trace (and its fp32 PyTorch reference) with the probe's provenance."""
    options.taps = (probe_file.info.tap,)
    recorded = probe_file.info.features.get("prompt")
    if recorded is not None and not options.prompt_input and options.prompt != recorded:
        raise CleanDiftError(
            f"the probe was trained on features made with the prompt {recorded!r}, not "
            f"{options.prompt!r}: export with --prompt {recorded!r}"
        )
    spec = build_export_graph(loaded, options)
    spec.module = with_probe(spec.module, loaded, probe_file)
    spec.build = {"head": probe_file.info.task, "probe": probe_record(probe_file)}
    return spec
