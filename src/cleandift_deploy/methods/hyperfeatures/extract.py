"""The UNet side of Diffusion Hyperfeatures: an image's 12 residual-branch maps per kept timestep.

One-step: the pruned FeatureUNet (taps res0_0 .. res3_2, t = -1) on the clean latent, the same
module the exported graph runs. Multi-step: 50 DDIM-inversion calls of the full UNet (each needs
the predicted noise), the maps read by forward hooks on the ResNets' conv2 during the kept calls;
PyTorch only. Image: squashed to the model's square size, latent = VAE posterior sample x scaling
factor (the reference) or the posterior mean.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import CleanDiftError
from ...manifest import is_random_source
from ...models import FeatureUNet, VAEEncoder, load_vae, prompt_embedding, tap_specs
from ...models.configs import default_image_size
from ...models.loading import LoadedUNet
from ...models.taps import RESNET_TAP_NAMES, TAP_SITES
from ...runtime.images import read_image
from ...runtime.preprocess import prepare
from .schedule import ONE_STEP, Variant, ddim_invert

LATENT_MODES = ("sample", "mean")
CACHE_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class ExtractSettings:
    """What shapes an image's maps (and therefore the cache key)."""

    variant: Variant = ONE_STEP
    latent: str = "sample"
    image_size: int | None = None
    """Square side in pixels; None: the architecture's size (512 for SD 1.5, 64 for tiny)."""
    seed: int = 0
    """Seed of the posterior sample (the same draw for every image)."""
    cache_dtype: str = "float32"

    def check(self) -> None:
        """One-line errors for unknown modes."""
        if self.latent not in LATENT_MODES:
            raise CleanDiftError(f"unknown latent mode {self.latent!r}: use sample or mean")
        if self.cache_dtype not in CACHE_DTYPES:
            raise CleanDiftError(f"unknown cache dtype {self.cache_dtype!r}: use float32/float16")


def layer_channels(unet_config: Any) -> tuple[int, ...]:
    """Channels of res0_0 .. res3_2 for this UNet (1280 x6, 640 x3, 320 x3 for SD)."""
    specs = tap_specs(unet_config)
    return tuple(specs[name].channels for name in RESNET_TAP_NAMES)


@contextmanager
def conv2_hooks(unet: Any, store: dict[str, torch.Tensor]) -> Iterator[None]:
    """While open, every UNet call leaves the 12 residual branches in `store` (by tap name)."""
    handles = []
    for name in RESNET_TAP_NAMES:
        site = TAP_SITES[name]
        assert site.layer is not None
        conv = unet.up_blocks[site.block].resnets[site.layer].conv2

        def hook(_module: Any, _inputs: Any, output: torch.Tensor, name: str = name) -> None:
            store[name] = output

        handles.append(conv.register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class UNetMaps:
    """`image -> L*T maps` (timestep-major), in PyTorch, for one model and settings."""

    def __init__(
        self,
        loaded: LoadedUNet,
        settings: ExtractSettings,
        *,
        random_init: bool = False,
        device: str = "cpu",
    ) -> None:
        settings.check()
        self.loaded = loaded
        self.settings = settings
        self.device = torch.device(device)
        random_init = random_init or is_random_source(loaded.source)
        vae = load_vae(loaded.root, loaded.arch, random_init=random_init)
        self.vae_encoder = VAEEncoder(vae).eval().to(self.device)
        self.context = prompt_embedding(loaded.root, loaded.arch, "", random_init=random_init).to(
            self.device
        )
        self.unet = loaded.unet.eval().to(self.device)
        self.one_step = FeatureUNet(self.unet, RESNET_TAP_NAMES, timestep=None).eval()
        side = settings.image_size or default_image_size(loaded.arch)
        self.size = (side, side)
        self.channels = layer_channels(loaded.unet.config)

    def key_parts(self) -> dict[str, str]:
        """What names these maps in the feature cache."""
        s = self.settings
        return {
            "kind": "hyperfeature-maps/1",
            "checkpoint": self.loaded.checkpoint_sha256,
            "arch": self.loaded.arch,
            "variant": s.variant.name,
            "latent": s.latent,
            "seed": str(s.seed),
            "size": f"{self.size[0]}x{self.size[1]}",
            "prompt": "",
            "dtype": s.cache_dtype,
        }

    def pixels(self, image_path: Path) -> torch.Tensor:
        """The image squashed to the model size, as a float [1,3,H,W] batch in [-1, 1]."""
        batch = prepare([read_image(image_path)], self.size, "squash").pixels
        return batch.float().to(self.device) / 127.5 - 1.0

    @torch.no_grad()
    def latents(self, image: torch.Tensor) -> torch.Tensor:
        """Scaled posterior sample (seeded) or mean of the image's latent."""
        mean, std = self.vae_encoder.posterior(image)
        if self.settings.latent == "mean":
            return mean
        generator = torch.Generator().manual_seed(self.settings.seed)
        noise = torch.randn(mean.shape, generator=generator).to(mean)
        return mean + std * noise

    @torch.no_grad()
    def maps(self, latents: torch.Tensor) -> list[torch.Tensor]:
        """The L*T residual-branch maps of a latent batch, timestep-major."""
        variant = self.settings.variant
        context = self.context.expand(latents.shape[0], -1, -1)
        if variant.steps == 1:
            found = self.one_step(latents, context, torch.tensor([-1.0]))
            return [found[name] for name in RESNET_TAP_NAMES]
        kept: dict[int, list[torch.Tensor]] = {}
        saved = set(variant.saved_calls())
        store: dict[str, torch.Tensor] = {}

        def eps(x: torch.Tensor, t: float, index: int) -> torch.Tensor:
            step = torch.full((x.shape[0],), t, device=x.device)
            out = self.unet(x, step, encoder_hidden_states=context).sample
            if index in saved:
                kept[index] = [store[name] for name in RESNET_TAP_NAMES]
            return out

        with conv2_hooks(self.unet, store):
            ddim_invert(latents, variant, eps)
        return [m for index in variant.saved_calls() for m in kept[index]]

    def image_maps(self, image_path: Path) -> dict[str, torch.Tensor]:
        """One image's maps as cache tensors `{"000": [C,h,w], ...}`."""
        maps = self.maps(self.latents(self.pixels(image_path)))
        dtype = getattr(torch, self.settings.cache_dtype)
        return {f"{k:03d}": m[0].to("cpu", dtype).contiguous() for k, m in enumerate(maps)}


def cached_maps(tensors: dict[str, torch.Tensor], device: str = "cpu") -> list[torch.Tensor]:
    """Cache tensors back to the L*T list of `[1,C,h,w]` float32 maps."""
    return [tensors[k][None].to(device, torch.float32) for k in sorted(tensors)]


def rescale_points(points: np.ndarray, size: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """(x, y) in an image of `size` (W, H) onto a `grid` (h, w) map's cell coordinates."""
    scale = np.array([grid[1] / size[0], grid[0] / size[1]])
    return np.asarray(points, dtype=np.float64) * scale
