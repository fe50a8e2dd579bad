"""Reading weights: safetensors only, strict key and shape checks, content hashes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..errors import CleanDiftError
from .sources import PICKLE_SUFFIXES

WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "model.safetensors",
)
INDEX_NAMES = tuple(
    name.replace(".safetensors", ".safetensors.index.json") for name in WEIGHT_NAMES
)


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of one safetensors file; a clear error when it is corrupt or not safetensors."""
    if path.suffix in PICKLE_SUFFIXES:
        raise CleanDiftError(
            f"{path} is a pickle checkpoint, which is never loaded (it can run code): "
            "convert it to safetensors"
        )
    try:
        return read_aligned(path)[0]
    except (SafetensorError, OSError, ValueError) as err:
        raise CleanDiftError(f"cannot read {path} as safetensors ({err}): re-download it") from None


def read_aligned(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Every tensor of a safetensors file in fresh, aligned memory, and the file's metadata.

    `get_tensor` can return tensors at unaligned addresses; vectorised CPU kernels then sum in
    another order and the last bit of a result depends on where the file put the tensor (seen on
    AVX-512 CPUs without AMX). A copy per tensor makes loaded weights compute like fresh ones.
    """
    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata() or {})
        tensors = {key: handle.get_tensor(key).clone() for key in handle.keys()}  # noqa: SIM118
    return tensors, metadata


def weight_files(folder: Path) -> list[Path]:
    """The safetensors weight file(s) of a diffusers model folder (single or sharded)."""
    for index_name in INDEX_NAMES:
        index = folder / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [folder / shard for shard in shards]
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return [folder / name]
    pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise CleanDiftError(
            f"{folder} has only pickle weights ({', '.join(pickles)}), which are never loaded: "
            "convert them to safetensors"
        )
    raise CleanDiftError(f"no safetensors weights in {folder}")


def read_folder_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The full state dict stored in a diffusers model folder."""
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(folder):
        state.update(read_safetensors(path))
    return state


def sha256_of(paths: Iterable[Path]) -> str:
    """A hash over the bytes of the given files, in order: identifies a checkpoint in manifests."""
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 23):
                digest.update(chunk)
    return digest.hexdigest()


def _summarise(keys: list[str], limit: int = 3) -> str:
    shown = ", ".join(keys[:limit])
    more = f", ... (+{len(keys) - limit})" if len(keys) > limit else ""
    return f"{len(keys)} ({shown}{more})"


def mismatch_message(
    what: str, missing: Iterable[str], unexpected: Iterable[str], mismatched: Iterable[str]
) -> str | None:
    """The one-line refusal for a state dict that does not fit its model (None when it fits)."""
    parts = [
        f"{label} {_summarise(sorted(keys))}"
        for label, keys in (
            ("missing keys", list(missing)),
            ("unexpected keys", list(unexpected)),
            ("shape mismatches", list(mismatched)),
        )
        if keys
    ]
    if not parts:
        return None
    return (
        f"{what} does not match the architecture: {'; '.join(parts)}. "
        "Check the checkpoint and the architecture (--arch or the config beside it)"
    )


def load_strict(
    module: nn.Module,
    state: Mapping[str, torch.Tensor],
    what: str,
    dtype: torch.dtype = torch.float32,
) -> None:
    """Load `state` into `module` (which may live on the meta device) or fail in one message.

    Every key must be present with the module's shape; floating tensors are cast to `dtype`.
    """
    expected = module.state_dict()
    message = mismatch_message(
        what,
        set(expected) - set(state),
        set(state) - set(expected),
        (
            k
            for k in set(expected) & set(state)
            if tuple(expected[k].shape) != tuple(state[k].shape)
        ),
    )
    if message:
        raise CleanDiftError(message)
    cast = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    module.load_state_dict(cast, strict=True, assign=True)
