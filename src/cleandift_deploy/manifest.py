"""The manifest every exported model and engine carries (ONNX metadata and a JSON sidecar).

It says what the artifact computes and how it was made, so the runtime can refuse a mismatch with
a message instead of returning wrong features.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .atomic import write_text_atomic
from .errors import CleanDiftError

if TYPE_CHECKING:
    import onnx

MANIFEST_KEY = "cleandift_deploy.manifest"
"""The ONNX `metadata_props` key that holds the manifest JSON."""

FORMAT_VERSION = 1
"""Bumped whenever a field changes meaning; the runtime refuses other versions."""

RANDOM_SOURCE_PREFIX = "random-init:"
"""`source` of a model with random weights: `random-init:ARCH`."""
RANDOM_CHECKPOINT_PREFIX = "random-init-seed"
"""`checkpoint_sha256` of a model with random weights: `random-init-seedN` (rebuilt from N)."""
_VERSIONED = ("torch", "onnx", "onnxruntime", "diffusers", "onnx-graphsurgeon")


def random_source(arch: str) -> str:
    """The `source` recorded for random weights of `arch`."""
    return f"{RANDOM_SOURCE_PREFIX}{arch}"


def random_checkpoint(seed: int) -> str:
    """The `checkpoint_sha256` recorded for random weights drawn with `seed`."""
    return f"{RANDOM_CHECKPOINT_PREFIX}{seed}"


def is_random_source(source: str) -> bool:
    """Whether `source` names random weights rather than a checkpoint."""
    return source.startswith(RANDOM_SOURCE_PREFIX)


def random_seed(checkpoint_sha256: str) -> int:
    """The seed a random-weights `checkpoint_sha256` records (0 when it records none)."""
    seed = checkpoint_sha256.removeprefix(RANDOM_CHECKPOINT_PREFIX)
    return int(seed) if seed.isdigit() else 0


def package_versions() -> dict[str, str]:
    """Versions of the tools that shaped an artifact."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"cleandift-deploy": __version__}
    for name in _VERSIONED:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


@dataclass
class TapInfo:
    """One named output: channels and stride in image pixels."""

    name: str
    channels: int
    stride: int


@dataclass
class InputInfo:
    """The graph input: `image` (uint8 or float [-1,1], NCHW) or `latents` (scaled VAE latents)."""

    name: str = "image"
    dtype: str = "uint8"
    layout: str = "NCHW"
    value_range: tuple[float, float] = (0.0, 255.0)
    resize: str = "squash"
    """How the runtime fits an image to the graph's size: "squash" (as the references), "pad"
    or "letterbox" (DINOv2: aspect kept, centred, zero-padded)."""
    multiple: int = 64
    """Image sides must be multiples of this (64 for SD graphs, the patch size 14 for DINOv2)."""


@dataclass
class ShapeRange:
    """min / opt / max of one dynamic dimension (image pixels for height and width)."""

    min: int
    opt: int
    max: int

    def contains(self, value: int) -> bool:
        """Whether `value` lies inside the range."""
        return self.min <= value <= self.max


@dataclass
class Manifest:
    """What an artifact computes, from which checkpoint, with which tools, how well it agrees."""

    kind: str
    arch: str
    source: str
    checkpoint_sha256: str
    taps: list[TapInfo]
    input: InputInfo
    batch: ShapeRange
    height: ShapeRange
    width: ShapeRange
    timestep: float | None
    prompt: str | None
    prompt_input: bool
    precision: str
    versions: dict[str, str] = field(default_factory=dict)
    target: dict[str, Any] = field(default_factory=dict)
    agreement: dict[str, Any] = field(default_factory=dict)
    build: dict[str, Any] = field(default_factory=dict)
    noise: dict[str, Any] = field(default_factory=dict)
    """Noisy features (models/noise.py NoiseSpec.record): timestep, ensemble, seed, latent mode,
    random; empty for clean latents."""
    freeu: dict[str, float] = field(default_factory=dict)
    """FreeU factors b1, b2, s1, s2; empty when off."""
    origin: dict[str, Any] = field(default_factory=dict)
    """Where the weights came from when `source` is a Hugging Face repo id resolved from the
    local cache: `hub_repo`, `revision` (the snapshot's commit), `file`, `requested_revision`.
    Empty for local paths and random weights; `checkpoint_sha256` identifies the bytes either
    way. Older manifests without it read as empty."""
    toolkit_version: str = __version__
    format_version: int = FORMAT_VERSION

    @property
    def tap_names(self) -> tuple[str, ...]:
        """The output names, in order."""
        return tuple(t.name for t in self.taps)

    def to_json(self) -> str:
        """The manifest as indented JSON."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    def save(self, path: Path) -> None:
        """Write the JSON sidecar atomically."""
        write_text_atomic(path, self.to_json() + "\n")

    @classmethod
    def from_json(cls, text: str, origin: str = "manifest") -> Manifest:
        """Parse and check a manifest; other format versions are refused with what to do."""
        try:
            data = json.loads(text)
        except ValueError as err:
            raise CleanDiftError(
                f"{origin} is not valid JSON ({err}): re-export the model"
            ) from None
        version = data.get("format_version") if isinstance(data, dict) else None
        if version != FORMAT_VERSION:
            raise CleanDiftError(
                f"{origin} has manifest format {version}, this toolkit ({__version__}) reads "
                f"format {FORMAT_VERSION}: re-export the model with this version"
            )
        try:
            return cls(
                **{
                    **data,
                    "taps": [TapInfo(**t) for t in data["taps"]],
                    "input": InputInfo(
                        **{**data["input"], "value_range": tuple(data["input"]["value_range"])}
                    ),
                    "batch": ShapeRange(**data["batch"]),
                    "height": ShapeRange(**data["height"]),
                    "width": ShapeRange(**data["width"]),
                }
            )
        except (KeyError, TypeError) as err:
            raise CleanDiftError(
                f"{origin} is incomplete or malformed ({err}): re-export the model"
            ) from None

    @classmethod
    def load(cls, path: Path) -> Manifest:
        """Read a JSON sidecar."""
        if not path.is_file():
            raise CleanDiftError(f"no manifest at {path}: re-export the model, which writes one")
        return cls.from_json(path.read_text(), str(path))


def sidecar_path(artifact: Path) -> Path:
    """Where an artifact's JSON manifest lives: `model.onnx` -> `model.json`, and for engines
    `model.engine` -> `model.engine.json`, so an engine never overwrites its model's manifest."""
    artifact = Path(artifact)
    if artifact.suffix == ".onnx":
        return artifact.with_suffix(".json")
    return artifact.with_name(artifact.name + ".json")


def source_onnx(artifact: Path, manifest: Manifest) -> Path | None:
    """The ONNX graph an artifact runs: the file itself, or for an engine the ONNX file it was
    built from when that sits beside the engine (None otherwise)."""
    artifact = Path(artifact)
    if artifact.suffix == ".onnx":
        return artifact
    name = manifest.build.get("onnx")
    source = artifact.with_name(str(name)) if name else None
    return source if source is not None and source.suffix == ".onnx" and source.is_file() else None


def read_onnx_header(path: Path) -> onnx.ModelProto:
    """The ONNX graph at `path` without its external weights; a file that does not parse (cut
    short by a copy or download, or not ONNX at all) is named as damaged, in one line."""
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf raises DecodeError, OSError, ... for unreadable files
        raise CleanDiftError(
            f"{path} is damaged: not a complete ONNX model ({type(err).__name__}), perhaps cut "
            "short by a copy or download; copy it again or re-export it"
        ) from None


def read_manifest_metadata(path: Path) -> Manifest:
    """The manifest stored in an ONNX file's metadata (every export writes it there)."""
    for prop in read_onnx_header(path).metadata_props:
        if prop.key == MANIFEST_KEY:
            return Manifest.from_json(prop.value, f"manifest in {path}")
    raise CleanDiftError(f"{path} carries no cleandift manifest: export it with this toolkit")


def artifact_manifest(path: Path) -> Manifest:
    """An artifact's manifest: the JSON sidecar, else (ONNX) the one in the graph's metadata, so
    a graph copied alone (or Triton's `1/model.onnx`) opens as it is."""
    path = Path(path)
    if not path.is_file():
        raise CleanDiftError(f"{path} does not exist: give an exported .onnx or a built engine")
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        return Manifest.load(sidecar)
    if path.suffix == ".onnx":
        return read_manifest_metadata(path)
    raise CleanDiftError(f"no manifest {sidecar.name} beside {path.name}: rebuild the engine")
