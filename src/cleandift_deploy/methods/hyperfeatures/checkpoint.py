"""A trained aggregation network on disk: safetensors weights plus the settings that made it.

The metadata says which UNet (checkpoint hash, source, arch), which variant and timesteps, which
latent mode and image size the network was trained on, so eval and export rebuild the same
feature path and refuse a different UNet.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from ...atomic import atomic_path
from ...errors import CleanDiftError
from ...models.checkpoints import load_strict, read_aligned
from ...models.loading import LoadedUNet
from ...models.provenance import Wording
from .aggregation import AggregationNetwork

AGGREGATOR_FORMAT = "cleandift-deploy-hyperfeatures/1"
AGGREGATOR_NAME = "aggregator.safetensors"


@dataclass(frozen=True)
class AggregatorInfo:
    """What the saved network expects as input and where its UNet features came from."""

    channels: tuple[int, ...]
    timesteps: tuple[float, ...]
    variant: str
    projection_dim: int
    arch: str
    source: str
    checkpoint_sha256: str
    latent: str
    image_size: int
    step: int = 0

    def build(self) -> AggregationNetwork:
        """A fresh network of this shape."""
        return AggregationNetwork(self.channels, len(self.timesteps), self.projection_dim)


def read_format(
    path: Path, expected: str, what: str
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors (aligned copies) and metadata of one of our safetensors files, refusing others."""
    try:
        tensors, metadata = read_aligned(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise CleanDiftError(f"cannot read {path} ({err})") from None
    if metadata.get("format") != expected:
        raise CleanDiftError(f"{path} is not a {what}")
    return tensors, metadata


def save_aggregator(path: Path, network: AggregationNetwork, info: AggregatorInfo) -> None:
    """Write weights and `info` atomically."""
    tensors = {
        k: v.detach().to("cpu").contiguous().clone() for k, v in network.state_dict().items()
    }
    metadata = {"format": AGGREGATOR_FORMAT, "info": json.dumps(asdict(info), sort_keys=True)}
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)


def load_aggregator(path: Path) -> tuple[AggregationNetwork, AggregatorInfo]:
    """The saved network (eval mode) and its info; one-line errors for missing or foreign files."""
    path = Path(path)
    if path.is_dir():
        path = path / AGGREGATOR_NAME
    if not path.is_file():
        raise CleanDiftError(
            f"no aggregation network at {path}: train one with `cleandift-deploy "
            "train-hyperfeatures` and pass its aggregator.safetensors"
        )
    tensors, metadata = read_format(path, AGGREGATOR_FORMAT, "hyperfeature aggregation network")
    raw = json.loads(metadata["info"])
    info = AggregatorInfo(
        **{**raw, "channels": tuple(raw["channels"]), "timesteps": tuple(raw["timesteps"])}
    )
    network = info.build()
    load_strict(network, tensors, f"aggregation network {path}")
    return network.eval(), info


UNET_WORDING = Wording(
    what="the UNet the network was trained on",
    fix="give that UNet",
    missing=("the UNet the network was trained on", "pass --source"),
)


def unet_for(info: AggregatorInfo, source: str | Path | None = None) -> LoadedUNet:
    """The UNet the network was trained on: `source`, else the one its info names (random
    weights are rebuilt from their seed); a different checkpoint is refused."""
    from ...models.provenance import Recorded, reload_unet

    recorded = Recorded(info.source, info.arch, info.checkpoint_sha256)
    return reload_unet(recorded, source, UNET_WORDING)
