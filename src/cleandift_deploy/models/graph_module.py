"""The PyTorch module that is traced: graph inputs in, one tensor per tap out.

It fixes the graph's input contract (uint8 images scaled inside the graph, or latents; a baked or
an input prompt embedding) so that the traced ONNX graph and the PyTorch reference are one module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..manifest import InputInfo, TapInfo, is_random_source
from . import (
    FeatureUNet,
    ImageFeatureModel,
    VAEEncoder,
    load_vae,
    prompt_embedding,
    tap_infos,
)
from .graph_options import ExportOptions
from .graph_shapes import plan_shapes
from .loading import LoadedUNet
from .noise import EnsembleNoiser
from .taps import LATENT_STRIDE

IMAGE_INPUT = "image"
LATENT_INPUT = "latents"
PROMPT_INPUT = "encoder_hidden_states"


class ExportGraph(nn.Module):
    """`image uint8 [B,3,H,W]` (or `latents [B,4,h,w]`) [+ `encoder_hidden_states`] -> taps.

    Images are scaled from [0, 255] to [-1, 1] inside the graph: the host sends bytes, not floats.
    Outputs are a tuple in tap order, as tracing needs.
    """

    prompt_embeds: torch.Tensor

    def __init__(
        self,
        features: FeatureUNet,
        vae_encoder: VAEEncoder | None,
        prompt_embeds: torch.Tensor | None,
        noiser: EnsembleNoiser | None = None,
    ) -> None:
        super().__init__()
        self.features = features
        self.image_model = (
            ImageFeatureModel(vae_encoder, features, noiser=noiser)
            if vae_encoder is not None
            else None
        )
        self.has_prompt = prompt_embeds is not None
        if prompt_embeds is not None:
            self.register_buffer("prompt_embeds", prompt_embeds.detach().clone(), persistent=False)

    @property
    def taps(self) -> tuple[str, ...]:
        """Output names, in order."""
        return self.features.taps

    def output_infos(self, unet_config: Mapping[str, Any]) -> list[TapInfo]:
        """The manifest's description of the outputs (a subclass with a head overrides it)."""
        return tap_infos(unet_config, self.taps)

    @property
    def input_names(self) -> list[str]:
        """Graph input names, in `forward` order."""
        first = IMAGE_INPUT if self.image_model is not None else LATENT_INPUT
        return [first] if self.has_prompt else [first, PROMPT_INPUT]

    def tapped(
        self, x: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Every tapped feature map for a batch of uint8 images (or latents), by tap name; the
        graphs with a head inside read theirs from here."""
        if encoder_hidden_states is None:
            encoder_hidden_states = self.prompt_embeds
        if self.image_model is not None:
            image = x.to(torch.float32) / 127.5 - 1.0
            return self.image_model(image, encoder_hidden_states)
        return self.features(x, encoder_hidden_states)

    def forward(
        self, x: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """Taps for a batch of uint8 images (or latents)."""
        found = self.tapped(x, encoder_hidden_states)
        return tuple(found[name] for name in self.taps)


@dataclass
class GraphSpec:
    """The traced module and what the manifest needs to say about it."""

    module: ExportGraph
    timestep: float
    prompt: str | None
    cross_attention_dim: int
    build: dict[str, Any] = field(default_factory=dict)
    """Extra entries for the manifest's `build` record (e.g. a head's provenance)."""


def is_random_init(loaded: LoadedUNet) -> bool:
    """Whether the UNet has random weights, so a random VAE and prompt embedding are fitting."""
    return is_random_source(loaded.source)


def _timestep(loaded: LoadedUNet, options: ExportOptions) -> float:
    """The UNet's timestep: given, else the noise's (noisy features), else the checkpoint's."""
    if options.timestep is not None:
        return float(options.timestep)
    if options.noise is not None:
        return float(options.noise.timestep)
    return loaded.timestep


def build_export_graph(loaded: LoadedUNet, options: ExportOptions) -> GraphSpec:
    """The fp32 module to trace (and to use as the reference) for these options."""
    timestep = _timestep(loaded, options)
    random_init = options.random_init or is_random_init(loaded)
    features = FeatureUNet(loaded.unet, options.taps, timestep=timestep, freeu=options.freeu)
    features.eval()
    vae_encoder = None
    noiser = None
    if options.vae:
        vae = load_vae(loaded.root, loaded.arch, random_init=random_init)
        vae_encoder = VAEEncoder(vae).eval()
        if options.noise is not None:
            plan = plan_shapes(loaded.arch, options)
            largest = (plan.height.max // LATENT_STRIDE, plan.width.max // LATENT_STRIDE)
            noiser = EnsembleNoiser(options.noise, vae_encoder.latent_channels, largest)
    prompt_embeds = None
    if not options.prompt_input:
        prompt_embeds = prompt_embedding(
            loaded.root, loaded.arch, options.prompt, random_init=random_init
        )
    module = ExportGraph(features, vae_encoder, prompt_embeds, noiser).eval()
    return GraphSpec(
        module=module,
        timestep=timestep,
        prompt=None if options.prompt_input else options.prompt,
        cross_attention_dim=features.cross_attention_dim,
    )


def input_info(vae: bool) -> InputInfo:
    """The graph input's contract: uint8 images scaled in the graph, or scaled VAE latents."""
    if vae:
        return InputInfo(IMAGE_INPUT, "uint8", "NCHW", (0.0, 255.0), "squash")
    return InputInfo(LATENT_INPUT, "float32", "NCHW", (float("-inf"), float("inf")), "none")
