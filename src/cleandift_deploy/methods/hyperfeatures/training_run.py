"""One training run end to end: read pairs, cache every image's maps, train, write the outputs.

Outputs in `out/`: `state.safetensors` (resumable), `aggregator.safetensors` (the network for
eval and export), `loss.png`, `mixing_weights.png` and `history.json`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...atomic import write_text_atomic
from ...errors import CleanDiftError
from ...eval.cache import FeatureCache
from ...eval.datasets import load_pairs
from ...models.loading import LoadedUNet
from ...train.distributed import World, barrier, split_batch
from .aggregation import AggregationNetwork
from .checkpoint import AGGREGATOR_NAME, AggregatorInfo, save_aggregator
from .extract import ExtractSettings, UNetMaps
from .plots import plot_loss, plot_mixing_weights
from .train import (
    STATE_NAME,
    HyperTrainSettings,
    MapStore,
    StepCallback,
    make_optimizer,
    restore_state,
    save_state,
    train_steps,
)

CACHE_FOLDER = "feature-cache"


@dataclass
class RunOptions:
    """Where the pairs come from and where the run writes."""

    data: Path
    out: Path
    dataset: str = "spair"
    split: str = "trn"
    categories: Sequence[str] | None = None
    limit: int | None = None
    cache: Path | None = None
    resume: bool = False
    device: str = "cpu"
    extract: ExtractSettings = field(default_factory=ExtractSettings)
    train: HyperTrainSettings = field(default_factory=HyperTrainSettings)


@dataclass
class RunResult:
    """What a finished run produced."""

    network: AggregationNetwork
    info: AggregatorInfo
    history: list[float]
    extractions: int
    files: dict[str, Path]


def _info(extractor: UNetMaps, network: AggregationNetwork, step: int) -> AggregatorInfo:
    loaded, settings = extractor.loaded, extractor.settings
    return AggregatorInfo(
        channels=network.channels,
        timesteps=settings.variant.timesteps(),
        variant=settings.variant.name,
        projection_dim=network.projection_dim,
        arch=loaded.arch,
        source=loaded.source,
        checkpoint_sha256=loaded.checkpoint_sha256,
        latent=settings.latent,
        image_size=extractor.size[0],
        step=step,
    )


def run_training(
    loaded: LoadedUNet,
    options: RunOptions,
    on_cache: Callable[[int, int], None],
    on_step: StepCallback,
    world: World | None = None,
) -> RunResult:
    """Train (or resume) and write the outputs; `on_cache` and `on_step` drive progress bars.
    Under torchrun (`world`) every rank extracts its share of the images, then trains its slice
    of each batch; rank 0 writes."""
    world = world or World()
    split_batch(options.train.batch_size, world.size, "--batch-size")
    out = Path(options.out)
    state_path = out / STATE_NAME
    if state_path.exists() and not options.resume:
        raise CleanDiftError(f"{out} already holds a run: pass --resume, or choose a new --out")
    pairs = load_pairs(
        options.data, options.dataset, options.split, options.categories, options.limit
    )
    out.mkdir(parents=True, exist_ok=True)
    extractor = UNetMaps(loaded, options.extract, device=options.device)
    cache = FeatureCache(options.cache or out / CACHE_FOLDER, memory_items=64)
    store = MapStore(extractor, cache, options.device)
    store.fill(pairs, on_cache, world)
    barrier(world)
    with torch.random.fork_rng():
        torch.manual_seed(options.train.seed)
        network = AggregationNetwork(extractor.channels, len(options.extract.variant.timesteps()))
    network.to(options.device)
    optimizer = make_optimizer(network, options.train)
    history: list[float] = []
    if options.resume:
        if not state_path.is_file():
            raise CleanDiftError(f"no training state at {state_path}: run without --resume")
        history = restore_state(state_path, network, optimizer, _info(extractor, network, 0))
    files = {
        "state": state_path,
        "aggregator": out / AGGREGATOR_NAME,
        "loss": out / "loss.png",
        "mixing_weights": out / "mixing_weights.png",
        "history": out / "history.json",
    }

    def save(step: int) -> None:
        info = _info(extractor, network, step)
        save_state(state_path, network, optimizer, history, info)
        save_aggregator(files["aggregator"], network, info)
        plot_loss(history, files["loss"])
        plot_mixing_weights(network.weights().cpu(), info.timesteps, files["mixing_weights"])
        write_text_atomic(files["history"], f"{[round(v, 6) for v in history]}\n")

    history = train_steps(
        network, optimizer, store, pairs, options.train, history, on_step, save, world
    )
    return RunResult(
        network, _info(extractor, network, len(history)), history, cache.extractions, files
    )
