"""Training the aggregation network on keypoint pairs, over UNet maps cached once per image.

The reference runs the UNet (and the VAE) for both images at every step; the UNet is frozen, so
here every image's maps are computed once into the evaluator's FeatureCache and each step only
reads them and runs the aggregation network: AdamW (lr 1e-3, weight decay 0) on one pair per step
(`batch_size` pairs with a larger global batch), pairs in a seeded order reshuffled every epoch.
The state (network, AdamW moments, loss history) is one safetensors file written atomically every
`save_every` steps, so a run resumes exactly.

Under torchrun (`world` from `train.distributed`) each rank takes its slice of every global batch
of pairs, the network trains under DDP (the loss is the mean over the global batch), the logged
loss is averaged over ranks and only rank 0 writes; the result does not depend on the rank count.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from ...atomic import atomic_path
from ...errors import CleanDiftError
from ...eval.cache import FeatureCache
from ...eval.protocol import PairSample
from ...train.distributed import World, mean_over_ranks, on_main, rank_positions, wrap
from ...train.state import optimizer_state_tensors, restore_optimizer_state
from .aggregation import AggregationNetwork
from .checkpoint import AggregatorInfo, read_format
from .extract import UNetMaps, cached_maps, rescale_points
from .loss import clip_loss

STATE_FORMAT = "cleandift-deploy-hyperfeatures-state/1"
STATE_NAME = "state.safetensors"
StepCallback = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class HyperTrainSettings:
    """The optimisation settings (defaults: the reference's train.yaml)."""

    steps: int = 5000
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    save_every: int = 500
    batch_size: int = 1
    """Pairs per optimiser step, over all ranks (the reference: 1)."""


def pair_order(n_pairs: int, position: int, seed: int) -> int:
    """Which pair sits at `position` of the stream (step * batch + i): a seeded permutation per
    epoch."""
    epoch, position = divmod(position, n_pairs)
    rng = np.random.default_rng([seed, epoch])
    return int(rng.permutation(n_pairs)[position])


class MapStore:
    """Each image's maps: computed once into the cache, then read back for every use."""

    def __init__(self, extractor: UNetMaps, cache: FeatureCache, device: str = "cpu") -> None:
        self.extractor = extractor
        self.cache = cache
        self.device = device

    def get(self, image_path: Path) -> list[torch.Tensor]:
        """The L*T maps `[1,C,h,w]` of one image."""
        tensors = self.cache.get_or_compute(
            self.extractor.key_parts(), image_path, lambda: self.extractor.image_maps(image_path)
        )
        return cached_maps(tensors, self.device)

    def fill(
        self,
        pairs: Sequence[PairSample],
        progress: Callable[[int, int], None],
        world: World | None = None,
    ) -> None:
        """Compute every image of `pairs` that is not cached yet (each rank its share of the
        images, into the shared cache folder)."""
        world = world or World()
        images = sorted({p for pair in pairs for p in (pair.source_path, pair.target_path)})
        share = images[world.rank :: world.size]
        for done, path in enumerate(share, 1):
            self.get(path)
            progress(done, len(share))


def pair_maps(store: MapStore, pair: PairSample) -> list[torch.Tensor]:
    """Source and target maps stacked as a batch of 2, map by map."""
    source, target = store.get(pair.source_path), store.get(pair.target_path)
    return [torch.cat([s, t]) for s, t in zip(source, target, strict=True)]


def pair_loss(network: torch.nn.Module, store: MapStore, pair: PairSample) -> torch.Tensor:
    """The CLIP loss of one pair under `network`."""
    return batch_loss(network, store, [pair])


def batch_loss(
    network: torch.nn.Module, store: MapStore, pairs: Sequence[PairSample]
) -> torch.Tensor:
    """The mean CLIP loss of `pairs`, all their maps through `network` in one call."""
    per_pair = [pair_maps(store, pair) for pair in pairs]
    features = network([torch.cat(parts) for parts in zip(*per_pair, strict=True)])
    grid = (int(features.shape[-2]), int(features.shape[-1]))
    losses = [
        clip_loss(
            features[2 * i],
            features[2 * i + 1],
            rescale_points(pair.source_points, pair.source_size, grid),
            rescale_points(pair.target_points, pair.target_size, grid),
        )
        for i, pair in enumerate(pairs)
    ]
    return torch.stack(losses).mean()


def save_state(
    path: Path,
    network: AggregationNetwork,
    optimizer: torch.optim.Optimizer,
    history: list[float],
    info: AggregatorInfo,
) -> None:
    """Network, AdamW state and loss history, atomically."""
    tensors = {f"network.{k}": v.detach().clone() for k, v in network.state_dict().items()}
    tensors["history"] = torch.tensor(history, dtype=torch.float32).reshape(-1)
    optimizer_tensors, groups = optimizer_state_tensors(optimizer)
    tensors.update(optimizer_tensors)
    metadata = {
        "format": STATE_FORMAT,
        "optimizer_groups": groups,
        "info": json.dumps(asdict(info), sort_keys=True),
    }
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)


def restore_state(
    path: Path, network: AggregationNetwork, optimizer: torch.optim.Optimizer, info: AggregatorInfo
) -> list[float]:
    """Load a saved state into `network` and `optimizer`; return the loss history."""
    tensors, metadata = read_format(path, STATE_FORMAT, "hyperfeature training state")
    saved = json.loads(metadata["info"])
    current = {**asdict(info), "step": saved["step"]}
    if json.loads(json.dumps(current)) != saved:
        raise CleanDiftError(
            f"{path} was trained with other settings (UNet, variant, latent or size): "
            "resume with the same options, or start a new --out"
        )
    network_state = {
        k[len("network.") :]: v for k, v in tensors.items() if k.startswith("network.")
    }
    try:  # in place: the optimiser already holds these parameters
        network.load_state_dict(network_state, strict=True)
    except RuntimeError:
        raise CleanDiftError(f"{path} holds another network shape: start a new --out") from None
    restore_optimizer_state(optimizer, tensors, metadata["optimizer_groups"])
    return [float(v) for v in tensors["history"]]


def make_optimizer(network: AggregationNetwork, settings: HyperTrainSettings) -> torch.optim.AdamW:
    """AdamW over the mixing weights and the bottlenecks (the reference's two groups)."""
    groups = [
        {"params": [network.mixing_weights], "lr": settings.lr},
        {"params": list(network.bottlenecks.parameters()), "lr": settings.lr},
    ]
    return torch.optim.AdamW(groups, weight_decay=settings.weight_decay)


def train_steps(
    network: AggregationNetwork,
    optimizer: torch.optim.Optimizer,
    store: MapStore,
    pairs: Sequence[PairSample],
    settings: HyperTrainSettings,
    history: list[float],
    on_step: StepCallback,
    on_save: Callable[[int], None],
    world: World | None = None,
) -> list[float]:
    """Run from `len(history)` to `settings.steps`, `batch_size` pairs per step (this rank's
    slice of them); return the history. `on_save` runs on rank 0 only."""
    world = world or World()
    model = wrap(network, world)
    network.train()
    size = settings.batch_size
    for step in range(len(history), settings.steps):
        positions = rank_positions(step * size, size, world)
        batch = [pairs[pair_order(len(pairs), p, settings.seed)] for p in positions]
        optimizer.zero_grad(set_to_none=True)
        loss = batch_loss(model, store, batch)
        loss.backward()
        optimizer.step()
        history.append(float(mean_over_ranks(loss.detach(), world)))
        on_step(step + 1, {"clip": history[-1]})
        if (step + 1) % settings.save_every == 0 or step + 1 == settings.steps:
            on_main(world, lambda step=step: on_save(step + 1))  # type: ignore[misc]
    network.eval()
    return history
