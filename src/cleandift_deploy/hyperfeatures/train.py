"""Training the aggregation network on keypoint pairs, over UNet maps cached once per image.

The reference runs the UNet (and the VAE) for both images at every step; the UNet is frozen, so
here every image's maps are computed once into the evaluator's FeatureCache and each step only
reads them and runs the aggregation network: AdamW (lr 1e-3, weight decay 0) on one pair per step,
pairs in a seeded order reshuffled every epoch. The state (network, AdamW moments, loss history)
is one safetensors file written atomically every `save_every` steps, so a run resumes exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from ..atomic import atomic_path
from ..errors import CleanDiftError
from ..eval.cache import FeatureCache
from ..eval.methods import PairSample
from ..train.state import optimizer_state_tensors, restore_optimizer_state
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


def pair_order(n_pairs: int, step: int, seed: int) -> int:
    """Which pair step `step` trains on: a seeded permutation per epoch."""
    epoch, position = divmod(step, n_pairs)
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

    def fill(self, pairs: Sequence[PairSample], progress: Callable[[int, int], None]) -> None:
        """Compute every image of `pairs` that is not cached yet."""
        images = sorted({p for pair in pairs for p in (pair.source_path, pair.target_path)})
        for done, path in enumerate(images, 1):
            self.get(path)
            progress(done, len(images))


def pair_maps(store: MapStore, pair: PairSample) -> list[torch.Tensor]:
    """Source and target maps stacked as a batch of 2, map by map."""
    source, target = store.get(pair.source_path), store.get(pair.target_path)
    return [torch.cat([s, t]) for s, t in zip(source, target, strict=True)]


def pair_loss(network: AggregationNetwork, store: MapStore, pair: PairSample) -> torch.Tensor:
    """The CLIP loss of one pair under `network`."""
    features = network(pair_maps(store, pair))
    grid = (int(features.shape[-2]), int(features.shape[-1]))
    return clip_loss(
        features[0],
        features[1],
        rescale_points(pair.source_points, pair.source_size, grid),
        rescale_points(pair.target_points, pair.target_size, grid),
    )


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
) -> list[float]:
    """Run from `len(history)` to `settings.steps`, one pair per step; return the history."""
    network.train()
    for step in range(len(history), settings.steps):
        pair = pairs[pair_order(len(pairs), step, settings.seed)]
        optimizer.zero_grad(set_to_none=True)
        loss = pair_loss(network, store, pair)
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
        on_step(step + 1, {"clip": history[-1]})
        if (step + 1) % settings.save_every == 0 or step + 1 == settings.steps:
            on_save(step + 1)
    network.eval()
    return history
