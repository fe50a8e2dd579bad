"""Training a probe head on frozen, cached features (the probe3d protocol CleanDIFT cites).

AdamW, lr 5e-4, batch 8, 10 epochs, linear warm-up over 1.5 epochs then a quarter cosine down to
1% (probe3d `cosine_decay_linear_warmup`), seeded shuffling per epoch. The backbone never runs
here: the caller hands over a `ProbeData` whose features come from the evaluator's feature cache
(each image extracted once; flipped copies are separate items), which is what makes an epoch cost
milliseconds per image instead of a UNet pass (benchmarks/bench_probes.py).

Depth: SigLoss on the probe's grid against the ground truth bilinearly resized to that grid
(CleanDIFT `DepthPred.forward`); segmentation: cross-entropy of logits upsampled to the label size,
ignoring 255. Outputs in `out/`: `probe.safetensors` (the head and its record),
`state.safetensors` (resumable: head, AdamW state, loss history, settings), `loss.png` and
`history.json`; the state is written at the end of every epoch, atomically.

Under torchrun (`world` from `train.distributed`) `batch_size` is the global batch; each rank
takes a contiguous share of every batch (the short last batch of an epoch too) and the loss is
built from sums over all ranks (`global_sum`: SigLoss from the moments of g over every valid
pixel of the global batch, cross-entropy from its sum and count), so the gradients, summed over
ranks, are those of the one-process loss. Only rank 0 writes. A BatchNorm head (`bn-linear`)
would normalise with per-rank statistics and is refused under several processes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import save_file

from ..atomic import atomic_path, write_text_atomic
from ..errors import CleanDiftError
from ..models.checkpoints import read_aligned
from ..models.probe_heads import (
    IGNORE_INDEX,
    SIGLOSS_EPS,
    SIGLOSS_LAMBDA,
    Probe,
    ProbeInfo,
    build_probe,
    save_probe,
    segmentation_loss,
    sig_loss,
    upsample,
)
from .distributed import World, even_slice, global_sum, on_main, sum_gradients
from .plot import plot_losses
from .state import optimizer_state_tensors, restore_optimizer_state

STATE_FORMAT = "cleandift-deploy-probe-state/1"
STATE_NAME = "state.safetensors"
PROBE_NAME = "probe.safetensors"

StepCallback = Callable[[int, dict[str, float]], None]


@dataclass
class ProbeTrainSettings:
    """The optimisation (probe3d's defaults)."""

    epochs: int = 10
    batch_size: int = 8
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_epochs: float = 1.5
    min_factor: float = 0.01
    seed: int = 0
    sigloss_warmup_steps: int = 0
    """CleanDIFT's SigLoss warm-up (sqrt(0.15 mean(g)^2)) for this many first steps; 0: off."""

    def check(self) -> None:
        """One-line errors for settings that cannot train."""
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise CleanDiftError("probe training needs --epochs >= 1, --batch-size >= 1, --lr > 0")


class ProbeData(Protocol):
    """Training items: features `[C, h, w]` and targets (depth `[1, h, w]` on the feature grid,
    metres; or labels `[H, W]` int64, 255 ignored)."""

    def __len__(self) -> int: ...

    def features(self, index: int) -> torch.Tensor: ...

    def target(self, index: int) -> torch.Tensor: ...


@dataclass
class ProbeTrainResult:
    """The trained head, its record, the per-step losses and the files written."""

    probe: Probe
    info: ProbeInfo
    history: list[float]
    files: dict[str, Path] = field(default_factory=dict)


def lr_factor(step: int, total: int, warmup: float, min_factor: float) -> float:
    """probe3d's schedule: linear warm-up from `min_factor` to 1, then a quarter cosine to it."""
    span = 1.0 - min_factor
    if warmup > 0 and step <= warmup:
        return span * (step / warmup) + min_factor
    rest = max(total - warmup, 1e-9)
    return span * math.cos(0.5 * math.pi * (step - warmup) / rest) + min_factor


def batch_order(count: int, epoch: int, settings: ProbeTrainSettings) -> list[list[int]]:
    """The epoch's shuffled batches (seeded by seed and epoch, so a resumed run repeats them)."""
    generator = torch.Generator().manual_seed(settings.seed * 100_003 + epoch)
    order = torch.randperm(count, generator=generator).tolist()
    size = settings.batch_size
    return [order[start : start + size] for start in range(0, count, size)]


def probe_loss(
    probe: Probe,
    info: ProbeInfo,
    features: torch.Tensor,
    targets: torch.Tensor,
    warm_up: bool = False,
) -> torch.Tensor:
    """The task's loss for one batch."""
    prediction = probe(features)
    if info.task == "depth":
        return sig_loss(prediction, targets, warm_up)
    return segmentation_loss(prediction, targets)


def global_probe_loss(
    probe: Probe,
    info: ProbeInfo,
    features: torch.Tensor,
    targets: torch.Tensor,
    world: World,
    warm_up: bool = False,
) -> torch.Tensor:
    """`probe_loss` of the global batch when this rank holds only `features` (possibly none):
    the same value on every rank, differentiable in this rank's samples."""
    if features.shape[0] == 0:
        sums = torch.zeros(3)
    elif info.task == "depth":
        prediction = probe(features)
        valid = targets > 0
        g = torch.log(prediction[valid] + SIGLOSS_EPS) - torch.log(targets[valid] + SIGLOSS_EPS)
        count = torch.tensor(float(g.numel()))
        sums = torch.stack([g.sum(), (g * g).sum(), count])
    else:
        up = upsample(probe(features), (targets.shape[-2], targets.shape[-1]))
        labels = targets.long()
        total = F.cross_entropy(up, labels, ignore_index=IGNORE_INDEX, reduction="sum")
        count = (labels != IGNORE_INDEX).sum().float()
        sums = torch.stack([total, total.detach() * 0, count])
    first, second, count = global_sum(sums, world).unbind()
    if float(count) < (2 if info.task == "depth" else 1):
        raise CleanDiftError("a training batch has no valid targets (all ignored or <= 0)")
    if info.task != "depth":
        return first / count
    mean = first / count
    if warm_up:
        return torch.sqrt(SIGLOSS_LAMBDA * mean**2)
    variance = (second - first * mean) / (count - 1)  # unbiased, as torch.var in sig_loss
    return torch.sqrt(variance + SIGLOSS_LAMBDA * mean**2)


def _stack(data: ProbeData, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    features = torch.stack([data.features(i) for i in indices]).float()
    targets = torch.stack([data.target(i) for i in indices])
    return features, targets


def _settings_record(info: ProbeInfo, settings: ProbeTrainSettings, items: int) -> dict[str, Any]:
    head = {k: v for k, v in asdict(info).items() if k not in ("training",)}
    return {"probe": head, "settings": asdict(settings), "items": items}


def save_state(
    path: Path,
    probe: Probe,
    optimizer: torch.optim.Optimizer,
    history: list[float],
    record: dict[str, Any],
) -> None:
    """Head, AdamW state and loss history, atomically."""
    tensors = {
        f"probe.{k}": v.detach().cpu().contiguous().clone() for k, v in probe.state_dict().items()
    }
    tensors["history"] = torch.tensor(history, dtype=torch.float32).reshape(-1)
    optimizer_tensors, groups = optimizer_state_tensors(optimizer)
    tensors.update(optimizer_tensors)
    metadata = {
        "format": STATE_FORMAT,
        "optimizer_groups": groups,
        "record": json.dumps(record, sort_keys=True),
    }
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)


def restore_state(
    path: Path, probe: Probe, optimizer: torch.optim.Optimizer, record: dict[str, Any]
) -> list[float]:
    """Load a saved run into `probe` and `optimizer`, refusing one with other settings."""
    try:
        tensors, metadata = read_aligned(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise CleanDiftError(f"cannot read the probe training state {path} ({err})") from None
    if metadata.get("format") != STATE_FORMAT:
        raise CleanDiftError(f"{path} is not a probe training state")
    saved = json.loads(metadata["record"])
    if saved != json.loads(json.dumps(record, sort_keys=True)):
        raise CleanDiftError(
            f"{path} was trained with other settings or data: resume with the same options, "
            "or start a new --out"
        )
    state = {k[len("probe.") :]: v for k, v in tensors.items() if k.startswith("probe.")}
    probe.load_state_dict(state, strict=True)
    restore_optimizer_state(optimizer, tensors, metadata["optimizer_groups"])
    return [float(v) for v in tensors["history"]]


def train_probe(
    info: ProbeInfo,
    data: ProbeData,
    settings: ProbeTrainSettings,
    out: Path,
    resume: bool = False,
    on_step: StepCallback | None = None,
    world: World | None = None,
) -> ProbeTrainResult:
    """Train (or resume) a probe on `data` and write the outputs under `out` (as this rank of
    `world`: its share of every batch, rank 0 writes)."""
    settings.check()
    world = world or World()
    if world.distributed and info.head == "bn-linear":
        raise CleanDiftError(
            "the bn-linear head normalises with batch statistics, which would depend on the "
            "process count: train it in one process, or use --head linear"
        )
    if len(data) == 0:
        raise CleanDiftError("no training images")
    out = Path(out)
    state_path = out / STATE_NAME
    if state_path.exists() and not resume:
        raise CleanDiftError(f"{out} already holds a run: pass --resume, or choose a new --out")
    if resume and not state_path.is_file():
        raise CleanDiftError(f"no training state at {state_path}: run without --resume")
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng():
        torch.manual_seed(settings.seed)
        probe = build_probe(info)
    optimizer = torch.optim.AdamW(
        probe.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    record = _settings_record(info, settings, len(data))
    history = restore_state(state_path, probe, optimizer, record) if resume else []
    per_epoch = math.ceil(len(data) / settings.batch_size)
    total, warmup = settings.epochs * per_epoch, settings.warmup_epochs * per_epoch
    files = {
        "probe": out / PROBE_NAME,
        "state": state_path,
        "loss": out / "loss.png",
        "history": out / "history.json",
    }
    probe.train()
    for epoch in range(len(history) // per_epoch, settings.epochs):
        for indices in batch_order(len(data), epoch, settings):
            step = len(history)
            for group in optimizer.param_groups:
                group["lr"] = settings.lr * lr_factor(step, total, warmup, settings.min_factor)
            warm = step < settings.sigloss_warmup_steps
            optimizer.zero_grad(set_to_none=True)
            if world.distributed:
                share = even_slice(indices, world)
                empty = (torch.empty(0), torch.empty(0))
                features, targets = _stack(data, share) if share else empty
                loss = global_probe_loss(probe, info, features, targets, world, warm)
                if loss.requires_grad:
                    loss.backward()
                sum_gradients(list(probe.parameters()), world)
            else:
                features, targets = _stack(data, indices)
                loss = probe_loss(probe, info, features, targets, warm)
                loss.backward()
            optimizer.step()
            history.append(float(loss.detach()))
            if on_step is not None:
                on_step(step + 1, {info.task: history[-1]})
        on_main(world, lambda: save_state(files["state"], probe, optimizer, history, record))
    on_main(world, lambda: _write_outputs(files, probe, history, info, per_epoch))
    probe.eval()
    final = replace(info, training={**info.training, "steps": len(history)})
    return ProbeTrainResult(probe, final, history, files)


def _write_outputs(
    files: dict[str, Path], probe: Probe, history: list[float], info: ProbeInfo, per_epoch: int
) -> None:
    trained = replace(info, training={**info.training, "steps": len(history)})
    save_probe(files["probe"], probe, trained)
    label = "SigLoss" if info.task == "depth" else "cross-entropy"
    plot_losses(torch.tensor(history)[:, None], [info.task], files["loss"], ylabel=label)
    epochs = [
        sum(history[i : i + per_epoch]) / len(history[i : i + per_epoch])
        for i in range(0, len(history), per_epoch)
    ]
    document = {
        "task": info.task,
        "loss": label,
        "per_step": [round(v, 6) for v in history],
        "per_epoch": [round(v, 6) for v in epochs],
    }
    write_text_atomic(files["history"], json.dumps(document) + "\n")
