"""DINOv2 as a second backbone: ViT-S/B/L/G /14 from transformers, cut after one block.

The feature is what sd-dino and GeoAware-SC read (METHODS.md §2): the output of one block (block
11 of ViT-B; by default the last block of every size) BEFORE the final LayerNorm, with the CLS
token and any register tokens dropped, laid out as a grid `[B, C, H/14, W/14]`. The module takes
uint8 images and applies ImageNet mean/std inside, so an exported graph takes bytes as the UNet
graphs do. Position embeddings are interpolated by transformers (bicubic to the patch grid), which
traces into the graph, so one export serves every multiple of 14 in its size range.

transformers' `Dinov2Model` is used (timm is not a dependency; transformers is, and its model is
the one the official weights are converted to by `convert-dinov2`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CleanDiftError
from ..manifest import random_checkpoint, random_source
from .checkpoints import mismatch_message, read_safetensors, sha256_of
from .shapes import check_multiple
from .sources import LAYOUTS, resolve_source_files

PATCH = 14
DINO_TAP = "dino"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_DINO_SIZE = 840
"""sd-dino / GeoAware input side: 840 px letterboxed -> a 60 x 60 grid."""
POSITION_GRID = 518
"""The official checkpoints' position embeddings cover 518 px (37 x 37 patches)."""


@dataclass(frozen=True)
class DinoArch:
    """One DINOv2 size: width, depth, heads, FFN kind and register tokens."""

    name: str
    hidden_size: int
    layers: int
    heads: int
    swiglu: bool = False
    registers: int = 0
    position_size: int = POSITION_GRID
    image_size: int = DEFAULT_DINO_SIZE

    def config(self) -> dict[str, Any]:
        """The transformers config (Dinov2Config / Dinov2WithRegistersConfig keyword arguments)."""
        config: dict[str, Any] = {
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "mlp_ratio": 4,
            "image_size": self.position_size,
            "patch_size": PATCH,
            "use_swiglu_ffn": self.swiglu,
            "layerscale_value": 1.0,
            "layer_norm_eps": 1e-6,
        }
        if self.registers:
            config["num_register_tokens"] = self.registers
        return config


def _family(size: str, hidden: int, layers: int, heads: int, swiglu: bool) -> list[DinoArch]:
    return [
        DinoArch(f"dinov2_vit{size}14", hidden, layers, heads, swiglu),
        DinoArch(f"dinov2_vit{size}14_reg", hidden, layers, heads, swiglu, registers=4),
    ]


DINO_ARCHS: dict[str, DinoArch] = {
    a.name: a
    for a in (
        *_family("s", 384, 12, 6, False),
        *_family("b", 768, 12, 12, False),
        *_family("l", 1024, 24, 16, False),
        *_family("g", 1536, 40, 24, True),
        DinoArch("dinov2_tiny", 32, 2, 2, position_size=56, image_size=84),
        DinoArch("dinov2_tiny_reg", 32, 2, 2, registers=2, position_size=56, image_size=84),
    )
}
"""The official sizes (with and without registers) and a tiny one for tests."""


def is_dinov2(arch: str) -> bool:
    """Whether a manifest's arch names a DINOv2 backbone."""
    return arch.startswith("dinov2")


def default_dino_size(arch: str) -> int:
    """The image side a DINOv2 arch runs at by default (840 px; 84 for the tiny test model)."""
    return DINO_ARCHS[arch].image_size if arch in DINO_ARCHS else DEFAULT_DINO_SIZE


def get_dino_arch(name: str) -> DinoArch:
    """The named DINOv2 size, or a one-line error listing them."""
    try:
        return DINO_ARCHS[name]
    except KeyError:
        raise CleanDiftError(
            f"unknown DINOv2 architecture {name!r}: use one of {', '.join(DINO_ARCHS)}"
        ) from None


def build_backbone(config: dict[str, Any], device: str | torch.device = "cpu") -> nn.Module:
    """A transformers DINOv2 (with registers when the config asks) with initial weights."""
    from transformers import (
        Dinov2Config,
        Dinov2Model,
        Dinov2WithRegistersConfig,
        Dinov2WithRegistersModel,
    )

    public = {k: v for k, v in config.items() if not k.startswith("_")}
    with torch.device(device):
        if public.get("num_register_tokens", 0):
            return Dinov2WithRegistersModel(
                Dinov2WithRegistersConfig(**public, attn_implementation="sdpa")
            )
        public.pop("num_register_tokens", None)
        return Dinov2Model(Dinov2Config(**public, attn_implementation="sdpa"))


@dataclass
class LoadedDino:
    """A DINOv2 backbone with where it came from, as manifests need."""

    model: nn.Module
    arch: str
    source: str
    checkpoint_sha256: str
    origin: dict[str, Any] = field(default_factory=dict)
    """Hugging Face repo id and commit when resolved from the cache (`ResolvedSource.origin`)."""

    @property
    def num_layers(self) -> int:
        """Number of transformer blocks."""
        return len(self.model.encoder.layer)  # type: ignore[arg-type,union-attr]


def random_dino(arch: str, seed: int = 0) -> LoadedDino:
    """A named DINOv2 size with random weights, reproducible by seed."""
    spec = get_dino_arch(arch)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build_backbone(spec.config())
    return LoadedDino(model.eval(), arch, random_source(arch), random_checkpoint(seed))


def dino_arch_of_shapes(shapes: Mapping[str, Sequence[int]], arch: str | None = None) -> str:
    """The DINOv2 size of bare weights from their tensor shapes only (a safetensors header is
    enough, and every key layout works); a given `arch` must agree with the shapes."""
    bare = {k.removeprefix("dinov2."): tuple(v) for k, v in shapes.items()}
    cls = bare.get("embeddings.cls_token")
    layers = {int(k.split(".")[2]) for k in bare if k.startswith("encoder.layer.")}
    if cls is not None and layers:
        registers = bare.get("embeddings.register_tokens")
        found = (
            int(cls[-1]),
            max(layers) + 1,
            0 if registers is None else int(registers[1]),
            int(bare["embeddings.position_embeddings"][1]) - 1,
        )
        names = [
            name
            for name, spec in DINO_ARCHS.items()
            if found
            == (spec.hidden_size, spec.layers, spec.registers, (spec.position_size // PATCH) ** 2)
        ]
        if arch is not None and names and arch not in names:
            raise CleanDiftError(
                f"these DINOv2 weights are {names[0]}, not --arch {arch}: drop --arch or fix it"
            )
        if arch is not None or names:
            return arch or names[0]
    if arch is not None:
        return arch
    raise CleanDiftError(
        "cannot tell the DINOv2 size of these weights: pass --arch "
        f"({', '.join(DINO_ARCHS)}) or put transformers' config.json beside them"
    )


def dino_arch_of_config(config: dict[str, Any]) -> str:
    for name, spec in DINO_ARCHS.items():
        ours = spec.config()
        same = all(config.get(k, ours[k]) == ours[k] for k in ("hidden_size", "num_hidden_layers"))
        if same and config.get("num_register_tokens", 0) == spec.registers:
            return name
    return "dinov2_custom"


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' load report and progress bar off while we load: a mismatch becomes our one-
    line error instead of a table on stderr."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    except (RuntimeError, ValueError, OSError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CleanDiftError(
            f"transformers could not load these DINOv2 weights: {reason}"
        ) from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _model_class(registers: bool) -> Any:
    from transformers import Dinov2Model, Dinov2WithRegistersModel

    return Dinov2WithRegistersModel if registers else Dinov2Model


def _checked(loaded: tuple[Any, dict[str, Any]], what: str) -> nn.Module:
    """The model of `from_pretrained(..., output_loading_info=True)`, strictly: every weight
    present and used (transformers itself only warns and initialises missing ones randomly)."""
    model, info = loaded
    message = mismatch_message(
        what,
        info.get("missing_keys", ()),
        info.get("unexpected_keys", ()),
        (str(k[0]) if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys", ())),
    )
    if message:
        raise CleanDiftError(message)
    return model.to(torch.float32).eval()


def _from_folder(folder: Path, config: dict[str, Any]) -> nn.Module:
    """A transformers folder through `from_pretrained`: its key conversion reads the hub layout
    (`attention.attention.query`, written by `save_pretrained` in 4.x and 5.x alike) and the
    in-memory names of the installed version; safetensors only, local files only."""
    cls = _model_class(bool(config.get("num_register_tokens", 0)))
    with _quiet_transformers():
        loaded = cls.from_pretrained(
            str(folder),
            local_files_only=True,
            use_safetensors=True,
            attn_implementation="sdpa",
            output_loading_info=True,
        )
    return _checked(loaded, f"DINOv2 folder {folder}")


def _from_state(config: dict[str, Any], state: dict[str, torch.Tensor], what: str) -> nn.Module:
    """Bare weights through transformers' loading (and so its key conversion) with our config."""
    from transformers import Dinov2Config, Dinov2WithRegistersConfig

    public = {k: v for k, v in config.items() if not k.startswith("_")}
    registers = bool(public.get("num_register_tokens", 0))
    if not registers:
        public.pop("num_register_tokens", None)
    config_class = Dinov2WithRegistersConfig if registers else Dinov2Config
    with _quiet_transformers():
        loaded = _model_class(registers).from_pretrained(
            None,
            config=config_class(**public),
            state_dict=state,
            attn_implementation="sdpa",
            output_loading_info=True,
        )
    return _checked(loaded, what)


def load_dino(source: str | Path, *, arch: str | None = None) -> LoadedDino:
    """DINOv2 weights from a transformers folder (config.json + safetensors, as `save_pretrained`
    and the hub write them) or one safetensors file with transformers' key names (e.g. written
    by `convert-dinov2`), as a path or a cached Hugging Face repo id; pickles are refused. Both
    go through transformers' own loading, so every key layout it knows loads."""
    resolved = resolve_source_files(source)
    path = resolved.path
    if resolved.layout == "transformers-dinov2":
        files = resolved.weight_files  # refuses pickle-only folders before transformers looks
        config = resolved.config() or {}
        name = arch or dino_arch_of_config(config)
        model = _from_folder(path, config)
    elif path.is_file():
        state = read_safetensors(path)
        name = dino_arch_of_shapes(resolved.shapes or {k: v.shape for k, v in state.items()}, arch)
        model = _from_state(get_dino_arch(name).config(), state, f"DINOv2 weights {path.name}")
        files = [path]
    else:
        raise CleanDiftError(
            f"{source} is a {LAYOUTS.get(resolved.layout, resolved.layout)}, not DINOv2 weights: "
            "give a transformers DINOv2 folder or a .safetensors file"
        )
    return LoadedDino(model, name, resolved.pinned, sha256_of(files), resolved.origin())


def resolve_dino(
    source: str | Path | None, *, arch: str | None = None, random_init: bool = False, seed: int = 0
) -> LoadedDino:
    """What a CLI names: weights to load, or `--arch NAME --random-init`."""
    if random_init:
        if source is not None:
            raise CleanDiftError("give either SOURCE or --random-init, not both")
        if arch is None:
            raise CleanDiftError(f"--random-init needs --arch ({', '.join(DINO_ARCHS)})")
        return random_dino(arch, seed)
    if source is None:
        raise CleanDiftError(
            "give DINOv2 weights (folder, .safetensors or cached Hugging Face repo id), "
            "or --random-init"
        )
    return load_dino(source, arch=arch)


def check_dino_size(height: int, width: int) -> None:
    """Fail with the nearest valid sizes when a side is not a positive multiple of 14."""
    check_multiple("image", height, width, PATCH)


class DinoFeatures(nn.Module):
    """`image uint8 [B,3,H,W] -> (tokens [B,C,H/14,W/14],)`: one block's output, pre-norm.

    Only the blocks up to `layer` are held, so the graph (and the weights) stop there. Outputs
    are a one-tuple in the order of `taps`, like the UNet's export module.
    """

    taps: tuple[str, ...] = (DINO_TAP,)
    input_names: list[str] = ["image"]  # noqa: RUF012 - read-only, the graph's input names
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, loaded: LoadedDino, layer: int | None = None) -> None:
        super().__init__()
        depth = loaded.num_layers
        self.layer = depth - 1 if layer is None else int(layer)
        if not 0 <= self.layer < depth:
            raise CleanDiftError(
                f"layer {self.layer} does not exist: {loaded.arch} has blocks 0..{depth - 1}"
            )
        model: Any = loaded.model
        self.embeddings = model.embeddings
        self.blocks = nn.ModuleList(list(model.encoder.layer)[: self.layer + 1])
        self.skip = 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)
        self.channels = int(model.config.hidden_size)
        scale = torch.full((1, 3, 1, 1), 255.0)
        mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        self.register_buffer("mean", mean.view(1, 3, 1, 1) * scale, persistent=False)
        self.register_buffer("std", std.view(1, 3, 1, 1) * scale, persistent=False)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor]:
        """Token grid of a uint8 (or 0..255 float) image batch whose sides are multiples of 14."""
        x = (image.to(torch.float32) - self.mean) / self.std
        hidden = self.embeddings(x)
        for block in self.blocks:
            out = block(hidden)  # transformers 4.x returns a tuple, 5.x the tensor
            hidden = out[0] if isinstance(out, tuple) else out
        tokens = hidden[:, self.skip :]
        batch = image.shape[0]
        grid = tokens.transpose(1, 2).reshape(
            batch, self.channels, image.shape[2] // PATCH, image.shape[3] // PATCH
        )
        return (grid,)
