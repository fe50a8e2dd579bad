"""The image side: the VAE encoder (scaled posterior mean) composed with FeatureUNet."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL
from torch import nn

from ..errors import CleanDiftError
from .feature_unet import FeatureUNet, is_tracing
from .noise import EnsembleNoiser
from .shapes import check_channels, check_image_size


class VAEEncoder(nn.Module):
    """`image [B,3,H,W] in [-1,1] -> latents [B,4,H/8,W/8]`: the posterior mean, scaled.

    Only the encoder half of the VAE is held, so an export carries no decoder weights.
    """

    def __init__(self, vae: AutoencoderKL) -> None:
        super().__init__()
        self.encoder = vae.encoder
        self.quant_conv = vae.quant_conv
        self.latent_channels = int(vae.config.latent_channels)
        self.in_channels = int(vae.config.in_channels)
        self.scaling_factor = float(vae.config.scaling_factor)
        shift = vae.config.get("shift_factor")
        self.shift_factor = float(shift) if shift is not None else 0.0

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Scaled posterior mean of the image's latent distribution."""
        moments = self._moments(image)
        mean = moments[:, : self.latent_channels]
        return (mean - self.shift_factor) * self.scaling_factor

    def posterior(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled posterior mean and std (log-variance clamped to [-30, 20] as diffusers does):
        `mean + std * eps` is a posterior sample in latent units."""
        moments = self._moments(image)
        mean, logvar = moments[:, : self.latent_channels], moments[:, self.latent_channels :]
        std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
        return (mean - self.shift_factor) * self.scaling_factor, std * self.scaling_factor

    def _moments(self, image: torch.Tensor) -> torch.Tensor:
        moments = self.encoder(image)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return moments


class ImageFeatureModel(nn.Module):
    """`image [B,3,H,W] in [-1,1] -> {tap: features}`: VAE encoder, then the truncated UNet.

    The prompt embedding is baked (`prompt_embeds [1,S,D]`) or, when None, passed to `forward`.
    With a `noiser` the UNet sees noisy copies of each latent and the taps are their mean (DIFT).
    """

    prompt_embeds: torch.Tensor

    def __init__(
        self,
        vae_encoder: VAEEncoder,
        features: FeatureUNet,
        prompt_embeds: torch.Tensor | None = None,
        noiser: EnsembleNoiser | None = None,
    ) -> None:
        super().__init__()
        self.vae_encoder = vae_encoder
        self.features = features
        self.noiser = noiser
        self.has_prompt = prompt_embeds is not None
        if prompt_embeds is not None:
            self.register_buffer("prompt_embeds", prompt_embeds.detach().clone(), persistent=False)

    @property
    def taps(self) -> tuple[str, ...]:
        """The taps this model returns."""
        return self.features.taps

    def forward(
        self,
        image: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        timestep: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Features of a batch of images scaled to [-1, 1]."""
        if not is_tracing():
            self.check_image(image)
        if encoder_hidden_states is None:
            if not self.has_prompt:
                raise CleanDiftError("this model has no baked prompt: pass encoder_hidden_states")
            encoder_hidden_states = self.prompt_embeds.to(image.dtype)
        if self.noiser is None:
            return self.features(self.vae_encoder(image), encoder_hidden_states, timestep)
        noisy = self.noiser(*self.vae_encoder.posterior(image))
        context = self.noiser.per_copy(encoder_hidden_states, image.shape[0])
        return self.noiser.average(self.features(noisy, context, timestep))

    def check_image(self, image: torch.Tensor) -> None:
        """One-line errors for wrong ranks, channel counts and sizes."""
        if image.ndim != 4:
            raise CleanDiftError(
                f"images must be a [B,3,H,W] batch; got shape {tuple(image.shape)}"
            )
        check_channels("image", image.shape[1], self.vae_encoder.in_channels)
        check_image_size(image.shape[2], image.shape[3])
