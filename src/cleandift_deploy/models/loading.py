"""Loading UNets and VAEs: diffusers folders, CleanDIFT `*_unet` / `*_full` safetensors (local
paths or Hugging Face repo ids from the local cache, resolved by `sources`), or random weights
from a named architecture for size and speed work."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from ..errors import CleanDiftError
from ..manifest import random_checkpoint, random_source
from .checkpoints import load_strict, read_folder_weights, read_safetensors, sha256_of, weight_files
from .configs import ARCHS, get_arch
from .feature_unet import DEFAULT_TIMESTEP
from .sources import FULL_PREFIX, resolve_source_files

__all__ = ["FULL_PREFIX"]  # re-exported: the key prefix lives with the layout detection
FULL_TIMESTEP_KEY = "timestep"
_IDENTITY_DEFAULTS: dict[str, Any] = {
    "block_out_channels": None,
    "cross_attention_dim": None,
    "attention_head_dim": 8,
    "layers_per_block": 2,
    "use_linear_projection": False,
    "upcast_attention": False,
}


@dataclass
class LoadedUNet:
    """A UNet with where it came from: what manifests and exports need to know about it."""

    unet: UNet2DConditionModel
    arch: str
    source: str
    checkpoint_sha256: str
    learned_timestep: float | None = None
    root: Path | None = None
    """The pipeline folder that may also hold `vae/`, `text_encoder/` and `tokenizer/`."""
    origin: dict[str, Any] = field(default_factory=dict)
    """Hugging Face repo id and commit when resolved from the cache (`ResolvedSource.origin`)."""

    @property
    def timestep(self) -> float:
        """The timestep to use: the learned one from a `*_full` checkpoint, else 261."""
        return DEFAULT_TIMESTEP if self.learned_timestep is None else self.learned_timestep


def _public(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def build_unet(config: dict[str, Any], device: str | torch.device = "cpu") -> UNet2DConditionModel:
    """A UNet with initial weights (`device="meta"` allocates nothing: for shapes and counts)."""
    with torch.device(device):
        return UNet2DConditionModel.from_config(_public(config))


def build_vae(config: dict[str, Any], device: str | torch.device = "cpu") -> AutoencoderKL:
    """A VAE with initial weights (`device="meta"` allocates nothing)."""
    with torch.device(device):
        return AutoencoderKL.from_config(_public(config))


def _identity(config: dict[str, Any]) -> tuple[Any, ...]:
    values = []
    for key, default in _IDENTITY_DEFAULTS.items():
        value = config.get(key, default)
        values.append(tuple(value) if isinstance(value, list | tuple) else value)
    return tuple(values)


def identify_arch(config: dict[str, Any]) -> str:
    """The known architecture whose UNet config this is, else "custom"."""
    for name, arch in ARCHS.items():
        if _identity(arch.unet) == _identity(config):
            return name
    return "custom"


def random_unet(arch: str, seed: int = 0, device: str = "cpu") -> LoadedUNet:
    """A named architecture with random (diffusers-initialised) weights, reproducible by seed."""
    spec = get_arch(arch)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = build_unet(spec.unet_config(), device)
    return LoadedUNet(unet.eval(), spec.name, random_source(spec.name), random_checkpoint(seed))


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CleanDiftError(f"cannot read the config {path} ({err})") from None
    if "block_out_channels" not in config or "down_block_types" not in config:
        raise CleanDiftError(f"{path} is not a diffusers UNet config")
    return dict(config)


def _unet_folder(folder: Path) -> Path:
    for candidate in (folder / "unet", folder):
        if (candidate / "config.json").is_file():
            return candidate
    raise CleanDiftError(
        f"{folder} is not a diffusers UNet or pipeline folder (no config.json or unet/config.json)"
    )


def _pipeline_root(unet_dir: Path) -> Path | None:
    for candidate in (unet_dir, unet_dir.parent):
        if (candidate / "vae").is_dir() or (candidate / "text_encoder").is_dir():
            return candidate
    return None


def _config_for_file(
    path: Path, arch: str | None, state: dict[str, torch.Tensor]
) -> dict[str, Any]:
    if arch is not None:
        return get_arch(arch).unet_config()
    folder = path.parent
    for candidate in (folder / "config.json", folder / "unet" / "config.json"):
        if candidate.is_file():
            return _read_config(candidate)
    name = unet_arch_of_shapes({k: tuple(v.shape) for k, v in state.items()})
    if name is not None:
        return get_arch(name).unet_config()
    raise CleanDiftError(
        f"cannot tell the architecture of {path.name}: pass --arch ({', '.join(ARCHS)}) "
        "or put the UNet's config.json beside it"
    )


def unet_arch_of_shapes(shapes: Mapping[str, Sequence[int]]) -> str | None:
    """The known architecture whose UNet state dict has exactly these names and shapes (a
    safetensors header is enough), else None."""
    for name, spec in ARCHS.items():
        expected = build_unet(spec.unet_config(), "meta").state_dict()
        if expected.keys() == shapes.keys() and all(
            tuple(expected[k].shape) == tuple(shapes[k]) for k in expected
        ):
            return name
    return None


def _split_full(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], float | None]:
    """The student UNet and learned timestep of a `*_full` checkpoint; other files pass through."""
    if not any(key.startswith(FULL_PREFIX) for key in state):
        return state, None
    unet_state = {k[len(FULL_PREFIX) :]: v for k, v in state.items() if k.startswith(FULL_PREFIX)}
    timestep = state.get(FULL_TIMESTEP_KEY)
    return unet_state, None if timestep is None else float(timestep.float().reshape(-1)[0])


DINO_LAYOUTS = ("transformers-dinov2", "dinov2-safetensors")


def load_unet(
    source: str | Path, *, arch: str | None = None, dtype: torch.dtype = torch.float32
) -> LoadedUNet:
    """Load a UNet strictly from a diffusers folder (pipeline or `unet/`) or a CleanDIFT
    `*_unet.safetensors` / `*_full.safetensors` file, given as a path or a cached Hugging Face
    repo id (`sources.resolve_source_files`). Pickle files are refused."""
    resolved = resolve_source_files(source)
    path = resolved.path
    if resolved.layout in DINO_LAYOUTS:
        raise CleanDiftError(
            f"{source} holds DINOv2 weights, not a UNet: give it to export-dinov2 "
            "(or the method's DINOv2 source)"
        )
    if path.is_dir():
        unet_dir = _unet_folder(path)
        config = _read_config(unet_dir / "config.json")
        state, files, timestep = read_folder_weights(unet_dir), weight_files(unet_dir), None
        root = _pipeline_root(unet_dir)
    else:
        state, timestep = _split_full(read_safetensors(path))
        config, files = _config_for_file(path, arch, state), [path]
        root = _pipeline_root(path.parent)
    unet = build_unet(config, "meta")
    load_strict(unet, state, f"checkpoint {path.name}", dtype)
    return LoadedUNet(
        unet.eval(),
        identify_arch(config),
        resolved.pinned,
        sha256_of(files),
        timestep,
        root,
        resolved.origin(),
    )


def load_vae(
    root: Path | None, arch: str, *, random_init: bool = False, seed: int = 0
) -> AutoencoderKL:
    """The VAE from a pipeline folder's `vae/`, or random weights for a named architecture."""
    if root is not None and (root / "vae" / "config.json").is_file():
        folder = root / "vae"
        config = json.loads((folder / "config.json").read_text())
        vae = build_vae(config, "meta")
        load_strict(vae, read_folder_weights(folder), f"VAE in {folder}")
        return vae.eval()
    if not random_init:
        raise CleanDiftError(
            "no VAE found beside the UNet (expected a vae/ folder in the pipeline folder): "
            "give a pipeline folder, use --random-init, or work on latents with --no-vae"
        )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build_vae(dict(get_arch(arch).vae)).eval()


def resolve_source(
    source: str | Path | None,
    *,
    arch: str | None = None,
    random_init: bool = False,
    seed: int = 0,
    device: str = "cpu",
) -> LoadedUNet:
    """What a CLI SOURCE names: a checkpoint to load, or `--arch NAME --random-init`."""
    if random_init:
        if source is not None:
            raise CleanDiftError("give either SOURCE or --random-init, not both")
        if arch is None:
            raise CleanDiftError(f"--random-init needs --arch ({', '.join(ARCHS)})")
        return random_unet(arch, seed, device)
    if source is None:
        raise CleanDiftError(
            "give a SOURCE (diffusers folder, .safetensors or cached Hugging Face repo id), "
            "or --arch with --random-init"
        )
    return load_unet(source, arch=arch)
