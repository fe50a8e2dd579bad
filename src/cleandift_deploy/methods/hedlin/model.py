"""The differentiable part: crops -> VAE latents -> noisy latents -> UNet -> attention maps.

The UNet runs only as far as the deepest chosen attention layer (a `FeatureUNet` cut at the
matching tap), so the 64x64 up block and everything after it never run in the optimisation's
forward or backward; `prune=False` runs the whole diffusers UNet as the reference does (same maps).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from ...models import FeatureUNet, VAEEncoder
from ...models.taps import TAP_SITES, TapSite
from .attention import capture_cross_attention, token_map
from .settings import HedlinSettings, LayerRef


def deepest_tap(unet: UNet2DConditionModel, layers: Sequence[LayerRef]) -> str | None:
    """The FeatureUNet tap that runs every chosen `up_blocks[i].attentions[j]`: the deepest
    layer's own output (`us(3i+j+1)`), else its block's output after the upsampler, or None when
    no tap reaches it (the last block has no upsampler): then the whole UNet runs."""
    block, index = max(layers)
    names = {site: name for name, site in TAP_SITES.items()}
    if TapSite(block, index) in names:
        return names[TapSite(block, index)]
    if block < len(unet.up_blocks) and unet.up_blocks[block].upsamplers is not None:
        return names.get(TapSite(block, None))
    return None


class AttentionModel:
    """VAE encoder, (pruned) UNet and noise schedule, frozen; produces token attention maps."""

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        scheduler: DDPMScheduler,
        settings: HedlinSettings,
        *,
        prune: bool = True,
    ) -> None:
        self.unet = unet.eval().requires_grad_(False)
        self.encoder = VAEEncoder(vae).eval().requires_grad_(False)
        self.scheduler = scheduler
        self.settings = settings
        tap = deepest_tap(unet, settings.layers) if prune else None
        self.features = None if tap is None else FeatureUNet(unet, (tap,), timestep=None)
        self.width = int(unet.config.cross_attention_dim)

    @property
    def dtype(self) -> torch.dtype:
        """The UNet's parameter dtype: inputs are cast to it."""
        return next(self.unet.parameters()).dtype

    @torch.no_grad()
    def encode(self, crops: torch.Tensor) -> torch.Tensor:
        """`[N,3,S,S]` in [0, 1] -> scaled posterior-mean latents (`image2latent`)."""
        return self.encoder(crops.to(self.dtype) * 2 - 1)

    def noisy(self, latents: torch.Tensor, noise: torch.Tensor, timestep: int) -> torch.Tensor:
        """`add_noise` at one timestep for the whole batch."""
        steps = torch.full((latents.shape[0],), timestep, dtype=torch.long)
        return self.scheduler.add_noise(latents, noise.to(latents.dtype), steps)

    def maps(
        self, latents: torch.Tensor, contexts: torch.Tensor, timestep: int, out_size: int
    ) -> torch.Tensor:
        """`[B, L, out, out]`: the token's attention (mean over the kept heads) of every chosen
        layer, bilinearly resized (align_corners=False) to `out_size`."""
        t = torch.tensor([float(timestep)])
        with capture_cross_attention(self.unet, self.settings.layers) as captured:
            if self.features is not None:
                self.features(latents, contexts.to(latents.dtype), t)
            else:
                self.unet(latents, t, contexts.to(latents.dtype))
        resized = []
        for processor in captured:
            assert processor.probs is not None
            small = token_map(processor.probs, self.settings.token, self.settings.heads)
            resized.append(
                F.interpolate(
                    small[:, None], size=(out_size, out_size), mode="bilinear", align_corners=False
                )
            )
        return torch.cat(resized, dim=1)
