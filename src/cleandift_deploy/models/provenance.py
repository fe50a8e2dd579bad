"""Provenance: reload the weights a manifest (or a trained network's record) names, and check
that they are the ones it was made from.

Every comparison with PyTorch goes through here: `compare`, the PyTorch backend of an artifact,
the DINOv2 reference and the hyperfeature network's UNet. Random weights (`random-init:ARCH`,
`random-init-seedN`) are rebuilt from their seed; a checkpoint is loaded and its sha256 compared.
`reference_graph` is the one "manifest -> fp32 PyTorch graph module" for UNet artifacts.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from ..errors import CleanDiftError
from ..manifest import Manifest, is_random_source, random_seed

if TYPE_CHECKING:
    from .dinov2 import DinoFeatures, LoadedDino
    from .graph_module import GraphSpec
    from .graph_options import ExportOptions
    from .loading import LoadedUNet


class _Weights(Protocol):
    source: str
    checkpoint_sha256: str


W = TypeVar("W", bound=_Weights)


@dataclass(frozen=True)
class Recorded:
    """The weights something says it was made from."""

    source: str
    arch: str
    checkpoint_sha256: str

    @classmethod
    def of(cls, manifest: Manifest) -> Recorded:
        """What an artifact's manifest records."""
        return cls(manifest.source, manifest.arch, manifest.checkpoint_sha256)


@dataclass(frozen=True)
class Wording:
    """How the errors name the weights (`what`) and what to do about a mismatch (`fix`)."""

    what: str = "the checkpoint the model was exported from"
    fix: str = "give the original checkpoint"
    missing: tuple[str, str] | None = (
        "the model's checkpoint",
        "pass the checkpoint as the source for the PyTorch backend",
    )
    """(what, hint) of the error when the recorded source is not on this machine
    (`sources.find_recorded`); None: let the loader say it."""
    name_given: bool = False
    """Whether the mismatch message begins with "the reference"."""


def check_same_weights(loaded: _Weights, recorded: Recorded, wording: Wording = Wording()) -> None:
    """Refuse `loaded` unless its sha256 is the recorded one."""
    if loaded.checkpoint_sha256 != recorded.checkpoint_sha256:
        who = f"the reference {loaded.source}" if wording.name_given else loaded.source
        raise CleanDiftError(
            f"{who} is not {wording.what} (sha256 {loaded.checkpoint_sha256[:12]} vs "
            f"{recorded.checkpoint_sha256[:12]}): {wording.fix}"
        )


def reload(
    recorded: Recorded,
    source: str | Path | None,
    load: Callable[[str, str | None], W],
    random_weights: Callable[[str, int], W],
    known_archs: Collection[str],
    wording: Wording = Wording(),
) -> W:
    """`source` (else the recorded weights: rebuilt when random, loaded otherwise), checked."""
    if source is None and is_random_source(recorded.source):
        return random_weights(recorded.arch, random_seed(recorded.checkpoint_sha256))
    where = str(source or recorded.source)
    if source is None and wording.missing is not None:
        from .sources import find_recorded

        find_recorded(where, *wording.missing)
    loaded = load(where, recorded.arch if recorded.arch in known_archs else None)
    check_same_weights(loaded, recorded, wording)
    return loaded


def reload_unet(
    recorded: Recorded, source: str | Path | None = None, wording: Wording = Wording()
) -> LoadedUNet:
    """The UNet `recorded` names (or `source`), checked by hash."""
    from .configs import ARCHS
    from .loading import random_unet, resolve_source

    return reload(
        recorded,
        source,
        lambda where, arch: resolve_source(where, arch=arch),
        random_unet,
        ARCHS,
        wording,
    )


DINO_WORDING = Wording(
    what="the DINOv2 checkpoint the artifact was exported from",
    fix="give the original weights",
    missing=("the DINOv2 weights", "pass them as the reference source"),
)


def reload_dino(manifest: Manifest, source: str | Path | None = None) -> LoadedDino:
    """The DINOv2 weights an artifact was exported from (or `source`), checked by hash."""
    from .dinov2 import DINO_ARCHS, load_dino, random_dino

    return reload(
        Recorded.of(manifest),
        source,
        lambda where, arch: load_dino(where, arch=arch),
        random_dino,
        DINO_ARCHS,
        DINO_WORDING,
    )


def dino_reference_module(manifest: Manifest, source: str | Path | None = None) -> DinoFeatures:
    """The fp32 PyTorch module that computes what a DINOv2 artifact claims to compute."""
    from .dinov2 import DinoFeatures

    return DinoFeatures(reload_dino(manifest, source), manifest.build.get("layer")).eval()


def options_like(manifest: Manifest) -> ExportOptions:
    """The export options that rebuild a UNet artifact's graph (taps, t, prompt, input, noise,
    FreeU) in PyTorch; a probe graph's options run its probe's tap."""
    from .freeu import FreeU
    from .graph_module import IMAGE_INPUT
    from .graph_options import ExportOptions
    from .noise import NoiseSpec

    probe = manifest.build.get("probe")
    return ExportOptions(
        taps=manifest.tap_names if not probe else (probe["info"]["tap"],),
        timestep=manifest.timestep,
        prompt=manifest.prompt or "",
        prompt_input=manifest.prompt_input,
        vae=manifest.input.name == IMAGE_INPUT,
        random_init=is_random_source(manifest.source),
        noise=NoiseSpec.from_record(manifest.noise),
        freeu=FreeU.from_record(manifest.freeu),
        check_agreement=False,
    )


def reference_graph(loaded: LoadedUNet, manifest: Manifest) -> GraphSpec:
    """The fp32 graph module of `loaded` that computes what the UNet artifact claims to (with
    its probe head, reloaded and checked by hash, when it was exported with one)."""
    from .graph_module import build_export_graph

    graph = build_export_graph(loaded, options_like(manifest))
    return with_probe_of(graph, loaded, manifest.build)


def with_probe_of(graph: GraphSpec, loaded: LoadedUNet, build: dict[str, Any]) -> GraphSpec:
    """`graph` with the probe head a manifest's `build` record names appended (unchanged when
    it names none); the probe is reloaded and checked by hash."""
    from .probe_heads import probe_of_manifest

    probe = probe_of_manifest(build)
    if probe is None:
        return graph
    from .probe_graph import with_probe

    graph.module = with_probe(graph.module, loaded, probe)
    graph.build = {k: build[k] for k in ("head", "probe") if k in build}
    return graph
