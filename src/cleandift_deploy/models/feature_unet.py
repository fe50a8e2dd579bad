"""FeatureUNet: the UNet cut after its deepest requested tap, returning taps as named outputs.

It calls the UNet's submodules directly instead of hooking the full forward, so nothing after the
deepest tap is held by the module, runs, or appears in a trace.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from ..errors import CleanDiftError
from .freeu import FreeU, FreeUStage
from .resnet_branch import check_plain_resnet, resnet_with_branch
from .shapes import check_channels, check_latent_size
from .taps import DEFAULT_TAP, DEFAULT_TIMESTEP, TAP_SITES, deepest_tap, validate_taps

"""CleanDIFT's initial (and, for `*_unet` checkpoints, assumed) timestep."""

_UNSUPPORTED_CONFIG = (
    "class_embed_type",
    "addition_embed_type",
    "encoder_hid_dim_type",
    "time_cond_proj_dim",
)


def is_tracing() -> bool:
    """True while a graph is captured (ONNX export, torch.jit or torch.compile): shape checks
    must not become Python branches baked into the graph then."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


class UpStage(nn.Module):
    """The first `n_layers` layers of one up block, and its upsampler when a tap needs it.

    `n_skips` is the full block's skip count, so the stage takes the right skip tensors. With
    `last_attention=False` the last layer's attention is dropped (the deepest tap is that layer's
    ResNet residual branch).
    """

    def __init__(
        self, block: Any, n_layers: int, upsample: bool, last_attention: bool = True
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(block.resnets[:n_layers])
        for resnet in self.resnets:
            check_plain_resnet(resnet)
        attentions = getattr(block, "attentions", None)
        n_attentions = n_layers if last_attention else n_layers - 1
        self.attentions = (
            nn.ModuleList(attentions[:n_attentions]) if attentions is not None else None
        )
        self.upsamplers = block.upsamplers if upsample else None
        self.n_skips: int = len(block.resnets)
        self.freeu: FreeUStage | None = None

    def forward(
        self,
        hidden: torch.Tensor,
        skips: Sequence[torch.Tensor],
        temb: torch.Tensor,
        context: torch.Tensor,
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Run the kept layers; return the stage output, each complete layer's output and each
        ResNet's residual branch."""
        layer_outputs, branches = [], []
        for i, resnet in enumerate(self.resnets):
            skip = skips[-1 - i]
            if self.freeu is not None:
                hidden, skip = self.freeu(hidden, skip)
            hidden, branch = resnet_with_branch(resnet, torch.cat([hidden, skip], 1), temb)
            branches.append(branch)
            if self.attentions is not None:
                if i >= len(self.attentions):
                    break
                hidden = self.attentions[i](
                    hidden, encoder_hidden_states=context, return_dict=False
                )[0]
            layer_outputs.append(hidden)
        if self.upsamplers is not None:
            for upsampler in self.upsamplers:
                hidden = upsampler(hidden)
        return hidden, layer_outputs, branches


def _check_supported(unet: UNet2DConditionModel) -> None:
    config = unet.config
    used = [key for key in _UNSUPPORTED_CONFIG if config.get(key) is not None]
    if used:
        raise CleanDiftError(
            f"UNet config uses {', '.join(used)}: only Stable Diffusion 1.x/2.x UNets are supported"
        )


def _build_stages(unet: UNet2DConditionModel, taps: tuple[str, ...]) -> nn.ModuleList:
    deepest_name = deepest_tap(taps)
    deepest = TAP_SITES[deepest_name]
    stages = nn.ModuleList()
    for index in range(deepest.block + 1):
        if index >= len(unet.up_blocks):
            raise CleanDiftError(f"tap {deepest_name} needs up block {index}; this UNet has fewer")
        block = unet.up_blocks[index]
        last = index == deepest.block
        n_layers = deepest.layer + 1 if last and deepest.layer is not None else len(block.resnets)
        upsample = not (last and deepest.layer is not None)
        if n_layers > len(block.resnets):
            raise CleanDiftError(f"tap {deepest_name} needs a ResNet up block {index} lacks")
        if upsample and block.upsamplers is None:
            raise CleanDiftError(
                f"tap {deepest_name} reads after up block {index}'s upsampler; it has none"
            )
        stages.append(UpStage(block, n_layers, upsample, not (last and deepest.branch)))
    return stages


class FeatureUNet(nn.Module):
    """UNet features: `(latents [B,4,h,w], encoder_hidden_states [B|1,S,D]) -> {tap: tensor}`.

    The timestep is baked as a constant (`timestep=261.0`, CleanDIFT's value) or, with
    `timestep=None`, must be passed to `forward`. Parameters are shared with `unet`, not copied.
    With `freeu` the up blocks apply FreeU as diffusers' `enable_freeu` does (models/freeu.py).
    """

    timestep: torch.Tensor

    def __init__(
        self,
        unet: UNet2DConditionModel,
        taps: Sequence[str] = (DEFAULT_TAP,),
        timestep: float | None = DEFAULT_TIMESTEP,
        freeu: FreeU | None = None,
    ) -> None:
        super().__init__()
        _check_supported(unet)
        self.taps = validate_taps(taps)
        self.in_channels = int(unet.config.in_channels)
        self.cross_attention_dim = int(unet.config.cross_attention_dim)
        self.conv_in = unet.conv_in
        self.time_proj = unet.time_proj
        self.time_embedding = unet.time_embedding
        self.down_blocks = unet.down_blocks
        self.mid_block = unet.mid_block
        self.up_blocks = _build_stages(unet, self.taps)
        self.freeu = freeu
        for index, stage in enumerate(self.up_blocks):
            factors = None if freeu is None else freeu.for_block(index)
            if factors is not None:
                cast(UpStage, stage).freeu = FreeUStage(*factors)
        self.baked_timestep = timestep
        if timestep is not None:
            self.register_buffer("timestep", torch.tensor([timestep]), persistent=False)

    def forward(
        self,
        latents: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        timestep: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The requested taps, in canonical order (`mid`, `us1` .. `us10`, `res0_0` .. `res3_2`)."""
        if not is_tracing():
            self.check_inputs(latents, encoder_hidden_states)
        batch = latents.shape[0]
        context = encoder_hidden_states.expand(batch, -1, -1)
        temb = self._time_embedding(timestep, latents)
        hidden = self.conv_in(latents)
        skips = [hidden]
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                hidden, res = block(hidden_states=hidden, temb=temb, encoder_hidden_states=context)
            else:
                hidden, res = block(hidden_states=hidden, temb=temb)
            skips.extend(res)
        hidden = self.mid_block(hidden, temb, encoder_hidden_states=context)
        found = {"mid": hidden}
        for index, module in enumerate(self.up_blocks):
            stage = cast(UpStage, module)
            block_skips = skips[-stage.n_skips :]
            skips = skips[: -stage.n_skips]
            hidden, layers, branches = stage(hidden, block_skips, temb, context)
            for name, site in TAP_SITES.items():
                if site.block == index:
                    if site.branch:
                        if site.layer is not None and site.layer < len(branches):
                            found[name] = branches[site.layer]
                    elif site.layer is None:
                        found[name] = hidden
                    elif site.layer < len(layers):
                        found[name] = layers[site.layer]
        return {name: found[name] for name in self.taps}

    def _time_embedding(self, timestep: torch.Tensor | None, latents: torch.Tensor) -> torch.Tensor:
        if timestep is None:
            if self.baked_timestep is None:
                raise CleanDiftError("this FeatureUNet has no baked timestep: pass `timestep`")
            return self._time_embedding(self.timestep, latents)
        steps = timestep.reshape(-1).to(latents.device).expand(latents.shape[0])
        return self.time_embedding(self.time_proj(steps).to(latents.dtype))

    def check_inputs(self, latents: torch.Tensor, encoder_hidden_states: torch.Tensor) -> None:
        """One-line errors for wrong ranks, channels, sizes and cross-attention width."""
        if latents.ndim != 4:
            raise CleanDiftError(f"latents must be [B,C,h,w]; got shape {tuple(latents.shape)}")
        check_channels("latents", latents.shape[1], self.in_channels)
        check_latent_size(latents.shape[2], latents.shape[3])
        if encoder_hidden_states.ndim != 3:
            raise CleanDiftError(
                "encoder_hidden_states must be [B,S,D]; "
                f"got shape {tuple(encoder_hidden_states.shape)}"
            )
        width = encoder_hidden_states.shape[2]
        if width != self.cross_attention_dim:
            raise CleanDiftError(
                f"encoder_hidden_states width {width} does not match the UNet's cross-attention "
                f"width {self.cross_attention_dim}: use a prompt embedding from this model family"
            )
        if encoder_hidden_states.shape[0] not in (1, latents.shape[0]):
            raise CleanDiftError(
                f"encoder_hidden_states batch {encoder_hidden_states.shape[0]} must be 1 or match "
                f"the latents' batch {latents.shape[0]}"
            )
