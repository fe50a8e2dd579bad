"""The resumable training state as one safetensors file.

Tensors: the full student UNet (`student.*`), the heads and mapping network (`heads.*`), the
learned `timestep`, Adam's moments and step counts (`optimizer.<param index>.<name>`) and the
per-tap loss history (no generator state: the random draws are a function of the position).
Everything else (step, sample position, optimiser hyper-parameters, run settings) is JSON in the
file's metadata.
Nothing is pickled, and the file is replaced atomically, so a crash keeps the last good state.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from ..atomic import atomic_path
from ..errors import CleanDiftError
from ..models.checkpoints import load_strict, read_aligned
from .distill import Distiller

STATE_FORMAT = "cleandift-deploy-train-state/1"
STATE_NAME = "state.safetensors"


@dataclass
class Progress:
    """Where a run stands: optimiser steps done, samples consumed, losses so far."""

    step: int = 0
    cursor: int = 0
    history: torch.Tensor | None = None
    """`[steps, taps]` float32 loss per tap per step."""


def _cpu(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu").contiguous().clone()


def _prefixed(prefix: str, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}{key}": _cpu(value) for key, value in state.items()}


def _strip(prefix: str, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def optimizer_state_tensors(
    optimizer: torch.optim.Optimizer,
) -> tuple[dict[str, torch.Tensor], str]:
    """Adam's per-parameter tensors flattened under `optimizer.*`, the rest as JSON (shared by
    every resumable trainer: CleanDIFT distillation and the hyperfeature aggregator)."""
    state = optimizer.state_dict()
    tensors = {
        f"optimizer.{index}.{name}": _cpu(value)
        for index, slots in state["state"].items()
        for name, value in slots.items()
    }
    return tensors, json.dumps(state["param_groups"])


def restore_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], groups_json: str
) -> None:
    """Put the tensors and groups `optimizer_state_tensors` wrote back into `optimizer`."""
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in _strip("optimizer.", tensors).items():
        index, name = key.split(".", 1)
        slots.setdefault(int(index), {})[name] = value
    groups = json.loads(groups_json)
    for group in groups:
        group["betas"] = tuple(group["betas"])
    expected = sum(len(g["params"]) for g in optimizer.param_groups)
    if sum(len(g["params"]) for g in groups) != expected:
        raise CleanDiftError(
            "the saved optimiser state is for another set of parameters: "
            "resume with the same --arch and --taps, or start a new --out"
        )
    optimizer.load_state_dict({"state": slots, "param_groups": groups})


def save_state(
    path: Path,
    distiller: Distiller,
    optimizer: torch.optim.Optimizer,
    progress: Progress,
    settings: Mapping[str, Any],
) -> None:
    """Write everything needed to resume this run exactly, atomically (the random draws are a
    function of the position, so no generator state is needed)."""
    tensors = {
        **_prefixed("student.", distiller.student_unet.state_dict()),
        **_prefixed("heads.", distiller.heads.state_dict()),
        "timestep": _cpu(distiller.timestep),
    }
    if progress.history is not None:
        tensors["history"] = _cpu(progress.history)
    optimizer_tensors, groups = optimizer_state_tensors(optimizer)
    tensors.update(optimizer_tensors)
    metadata = {
        "format": STATE_FORMAT,
        "step": str(progress.step),
        "cursor": str(progress.cursor),
        "optimizer_groups": groups,
        "settings": json.dumps(dict(settings), sort_keys=True),
    }
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)


@dataclass
class SavedState:
    """A training state read back from disk, not yet applied."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]

    @property
    def settings(self) -> dict[str, Any]:
        """The run settings stored when the state was written."""
        return dict(json.loads(self.metadata["settings"]))

    @property
    def progress(self) -> Progress:
        """Step, sample position and loss history."""
        return Progress(
            int(self.metadata["step"]), int(self.metadata["cursor"]), self.tensors.get("history")
        )


def read_state(path: Path) -> SavedState:
    """Read a training state file; a clear error when it is missing, corrupt or not ours."""
    if not path.is_file():
        raise CleanDiftError(f"no training state at {path}: run without --resume to start one")
    try:
        tensors, metadata = read_aligned(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise CleanDiftError(f"cannot read the training state {path} ({err})") from None
    if metadata.get("format") != STATE_FORMAT:
        raise CleanDiftError(f"{path} is not a cleandift-deploy training state")
    return SavedState(tensors, metadata)


def restore_model(distiller: Distiller, saved: SavedState) -> None:
    """Load student, heads and learned timestep. Call before the optimiser is built: loading
    replaces the parameter tensors."""
    load_strict(distiller.student_unet, _strip("student.", saved.tensors), "the saved student")
    load_strict(distiller.heads, _strip("heads.", saved.tensors), "the saved heads")
    with torch.no_grad():
        distiller.timestep.copy_(saved.tensors["timestep"])
