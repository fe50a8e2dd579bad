"""Feature taps: names, where each sits in the UNet, and its channels and stride.

Names follow the CleanDIFT code: `mid` is the mid block's output; `us1`..`us10` walk the up blocks,
three per block (two layer outputs, then the block's output after its upsampler).
`resI_J` is the residual branch of `up_blocks[I].resnets[J]` (conv2's output, before the shortcut
is added): the 12 maps Diffusion Hyperfeatures aggregates.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import CleanDiftError
from ..manifest import TapInfo

LATENT_STRIDE = 8
DEFAULT_TAP = "us6"
"""The DIFT feature (up_blocks[1] after its upsampler): the tap used when none is asked."""
DEFAULT_TIMESTEP = 261.0
"""CleanDIFT's timestep: the learned t starts here, and a `*_unet` checkpoint (no learned t) runs
at it; DIFT's noise level too (methods.catalog shows both)."""
"""The VAE's downsampling factor: image pixels per latent cell."""


@dataclass(frozen=True)
class TapSite:
    """Where a tap is read: `block` is the up block index (-1 for the mid block), `layer` the
    resnet(+attention) index inside it, or None for the block's output after the upsampler;
    `branch` reads that layer's ResNet residual branch instead of the layer's output."""

    block: int
    layer: int | None
    branch: bool = False

    def depth(self) -> tuple[int, int]:
        """Position in forward order: a deeper site needs more of the UNet to run."""
        if self.layer is None:
            return (self.block, 1 << 16)
        return (self.block, 2 * self.layer + (0 if self.branch else 1))


TAP_SITES: dict[str, TapSite] = {
    "mid": TapSite(-1, None),
    "us1": TapSite(0, 0),
    "us2": TapSite(0, 1),
    "us3": TapSite(0, None),
    "us4": TapSite(1, 0),
    "us5": TapSite(1, 1),
    "us6": TapSite(1, None),
    "us7": TapSite(2, 0),
    "us8": TapSite(2, 1),
    "us9": TapSite(2, None),
    "us10": TapSite(3, 0),
}
TAP_NAMES: tuple[str, ...] = tuple(TAP_SITES)
"""The CleanDIFT taps (the default set for distillation)."""
RESNET_TAP_NAMES: tuple[str, ...] = tuple(f"res{i}_{j}" for i in range(4) for j in range(3))
"""ResNet residual-branch taps `res0_0` .. `res3_2`, in forward order."""
TAP_SITES.update({name: TapSite(int(name[3]), int(name[5]), True) for name in RESNET_TAP_NAMES})
ALL_TAP_NAMES: tuple[str, ...] = TAP_NAMES + RESNET_TAP_NAMES


@dataclass(frozen=True)
class TapSpec:
    """A tap's channel count and its stride in image pixels."""

    name: str
    channels: int
    stride: int


def validate_taps(taps: Iterable[str]) -> tuple[str, ...]:
    """The taps in canonical order, without duplicates; unknown names fail listing valid ones."""
    taps = tuple(taps)
    valid = f"{', '.join(TAP_NAMES)}, res0_0 .. res3_2"
    if not taps:
        raise CleanDiftError(f"no taps requested: choose from {valid}")
    unknown = [t for t in taps if t not in TAP_SITES]
    if unknown:
        raise CleanDiftError(f"unknown tap {', '.join(map(repr, unknown))}: valid taps are {valid}")
    return tuple(t for t in ALL_TAP_NAMES if t in taps)


def deepest_tap(taps: Iterable[str]) -> str:
    """The last tap in forward order: the graph stops there."""
    return max(validate_taps(taps), key=lambda name: TAP_SITES[name].depth())


def tap_specs(unet_config: Mapping[str, Any]) -> dict[str, TapSpec]:
    """Channels and strides of every tap for a diffusers UNet2DConditionModel config."""
    channels = list(unet_config["block_out_channels"])
    n_down = len(channels) - 1
    up_channels = channels[::-1]
    specs: dict[str, TapSpec] = {}
    for name, site in TAP_SITES.items():
        if site.block < 0:
            specs[name] = TapSpec(name, channels[-1], LATENT_STRIDE * 2**n_down)
            continue
        ups_before = site.block + (1 if site.layer is None else 0)
        stride = LATENT_STRIDE * 2 ** max(n_down - ups_before, 0)
        specs[name] = TapSpec(name, up_channels[site.block], stride)
    return specs


def tap_infos(unet_config: Mapping[str, Any], taps: Iterable[str]) -> list[TapInfo]:
    """The manifest's description of `taps` (name, channels, stride) for this UNet config."""
    specs = tap_specs(unet_config)
    return [TapInfo(t, specs[t].channels, specs[t].stride) for t in taps]
