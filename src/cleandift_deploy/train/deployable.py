"""The student as deployable files, in CleanDIFT's two layouts, both readable by `load_unet`.

`<name>_unet.safetensors` is a plain diffusers UNet state dict (the learned timestep is not in
it: consumers use 261 unless told otherwise). `<name>_full.safetensors` carries the student under
`unet_feature_extractor_cleandift.`, the learned `timestep`, and the heads under `heads.` (used
only to reproduce training-time projections). `config.json` beside them names the architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..atomic import atomic_path, write_text_atomic
from ..models.loading import FULL_PREFIX, FULL_TIMESTEP_KEY
from .distill import Distiller


@dataclass(frozen=True)
class StudentFiles:
    """Where the deployable student was written."""

    unet: Path
    full: Path
    config: Path


def _cpu_state(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {
        f"{prefix}{key}": value.detach().to("cpu").contiguous().clone()
        for key, value in module.state_dict().items()
    }


def student_files(folder: Path, name: str = "student") -> StudentFiles:
    """The deployable files' paths inside `folder`."""
    return StudentFiles(
        folder / f"{name}_unet.safetensors",
        folder / f"{name}_full.safetensors",
        folder / "config.json",
    )


def save_student(files: StudentFiles, distiller: Distiller) -> StudentFiles:
    """Write `*_unet.safetensors`, `*_full.safetensors` and `config.json`, each atomically."""
    write_text_atomic(files.config, distiller.student_unet.to_json_string())
    metadata = {"format": "pt", "learned_timestep": f"{float(distiller.timestep.detach()):.9g}"}
    with atomic_path(files.unet) as temporary:
        save_file(_cpu_state(distiller.student_unet), str(temporary), metadata=metadata)
    full = {
        **_cpu_state(distiller.student_unet, FULL_PREFIX),
        **_cpu_state(distiller.heads, "heads."),
        FULL_TIMESTEP_KEY: distiller.timestep.detach().to("cpu").clone(),
    }
    with atomic_path(files.full) as temporary:
        save_file(full, str(temporary), metadata=metadata)
    return files
