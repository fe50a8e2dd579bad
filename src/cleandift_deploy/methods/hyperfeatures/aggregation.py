"""The aggregation network: a bottleneck per layer, shared over timesteps, mixed by softmax weights.

As diffusion-hyperfeatures `archs/aggregation_network.py` (a detectron2 BottleneckBlock per layer:
1x1 in->96 + GN(32) + ReLU, 3x3 96->96 + GN + ReLU, 1x1 96->384 + GN, shortcut 1x1 in->384 + GN,
add, ReLU; MSRA fan-out init; mixing weights initialised to ones). Map k of the L*T inputs is
timestep k // L, layer k % L; every map is bilinearly resized to the output size first.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

PROJECTION_DIM = 384
NORM_GROUPS = 32


def _conv_norm(in_channels: int, out_channels: int, kernel: int) -> nn.Sequential:
    conv = nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return nn.Sequential(conv, nn.GroupNorm(NORM_GROUPS, out_channels))


class Bottleneck(nn.Module):
    """`[B,in,h,w] -> [B,out,h,w]`: the detectron2 bottleneck block with GroupNorm."""

    def __init__(self, in_channels: int, out_channels: int = PROJECTION_DIM) -> None:
        super().__init__()
        middle = out_channels // 4
        self.conv1 = _conv_norm(in_channels, middle, 1)
        self.conv2 = _conv_norm(middle, middle, 3)
        self.conv3 = _conv_norm(middle, out_channels, 1)
        self.shortcut = _conv_norm(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Bottleneck plus projected shortcut, then ReLU."""
        y = F.relu(self.conv1(x))
        y = F.relu(self.conv2(y))
        return F.relu(self.conv3(y) + self.shortcut(x))


class AggregationNetwork(nn.Module):
    """`maps (L*T tensors [B,C_l,h_l,w_l]) -> [B,384,H,W]`: sum_k softmax(w)_k bottleneck_l(f_k).

    `output_size=None` takes the largest map's size (64x64 for a 512 px image: the latent grid).
    """

    def __init__(
        self,
        channels: Sequence[int],
        n_timesteps: int,
        projection_dim: int = PROJECTION_DIM,
        output_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.channels = tuple(int(c) for c in channels)
        self.n_timesteps = int(n_timesteps)
        self.projection_dim = projection_dim
        self.output_size = output_size
        self.bottlenecks = nn.ModuleList(Bottleneck(c, projection_dim) for c in self.channels)
        self.mixing_weights = nn.Parameter(torch.ones(len(self.channels) * self.n_timesteps))

    def weights(self) -> torch.Tensor:
        """Softmax of the mixing weights, `[T, L]` (timestep, layer)."""
        return torch.softmax(self.mixing_weights, dim=0).reshape(self.n_timesteps, -1)

    def target_size(self, maps: Sequence[torch.Tensor]) -> tuple[int, int] | torch.Size:
        """The output grid: the configured size, else the largest input map's (kept symbolic,
        so a traced graph follows the input size)."""
        if self.output_size is not None:
            return self.output_size
        return max(maps, key=lambda m: m.shape[-1] * m.shape[-2]).shape[-2:]

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """Aggregate the L*T maps (timestep-major) into one `[B, projection_dim, H, W]` map."""
        n_layers = len(self.channels)
        if len(maps) != n_layers * self.n_timesteps:
            raise ValueError(f"expected {n_layers * self.n_timesteps} maps, got {len(maps)}")
        size = self.target_size(maps)
        weights = torch.softmax(self.mixing_weights, dim=0)
        output = None
        for k, feature in enumerate(maps):
            if tuple(feature.shape[-2:]) != tuple(size):
                feature = F.interpolate(feature, size=size, mode="bilinear", align_corners=False)
            term = weights[k] * self.bottlenecks[k % n_layers](feature)
            output = term if output is None else output + term
        assert output is not None
        return output
