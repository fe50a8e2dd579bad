"""A diffusers ResnetBlock2D run so that its residual branch is returned with its output.

Diffusion Hyperfeatures reads the residual branch (conv2's output, before the shortcut is added).
Forward hooks would capture it but are global module state (unsafe with several threads and
invisible to pruning), so the block's forward is spelled out here for the Stable Diffusion
configuration (no up/down sampling inside the block, "default" time-embedding norm); a test
checks it against hooks on the diffusers module.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import CleanDiftError


def check_plain_resnet(resnet: Any) -> None:
    """Refuse ResNet variants whose residual branch this module does not reproduce."""
    if resnet.upsample is not None or resnet.downsample is not None:
        raise CleanDiftError("residual-branch taps need up-block ResNets without resampling")
    if resnet.time_embedding_norm != "default":
        raise CleanDiftError(
            f"residual-branch taps need time_embedding_norm='default', "
            f"not {resnet.time_embedding_norm!r}: only Stable Diffusion 1.x/2.x UNets are supported"
        )


def resnet_with_branch(
    resnet: Any, hidden: torch.Tensor, temb: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(output, branch)`: the block's output and its residual branch (conv2 output)."""
    branch = resnet.conv1(resnet.nonlinearity(resnet.norm1(hidden)))
    if resnet.time_emb_proj is not None:
        step = temb if resnet.skip_time_act else resnet.nonlinearity(temb)
        branch = branch + resnet.time_emb_proj(step)[:, :, None, None]
    branch = resnet.norm2(branch)
    branch = resnet.conv2(resnet.dropout(resnet.nonlinearity(branch)))
    shortcut = hidden if resnet.conv_shortcut is None else resnet.conv_shortcut(hidden)
    return (shortcut + branch) / resnet.output_scale_factor, branch
