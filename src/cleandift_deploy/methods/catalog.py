"""THE catalog of methods: one entry per method, every fact about it in one place.

Each entry says where the method comes from (paper, reference code and the commit read), which
backbones it runs, what `export --method NAME` bakes into the graph (`export`: taps, latent, noise
timestep, ensemble, seed, FreeU, size, prompt), how features become a descriptor and how matches are
read out (`descriptor`: combination, PCA, DINOv2, mode, window, grid mapping), which evaluation
factory `eval pck --method NAME` builds (`evaluation`, a key of `methods.registry.METHODS`), and the
SPair-71k PCK@0.1 its paper reports (target box, zero-shot, as reproduced in the CleanDIFT paper;
shared/METHODS.md has where each number was read).

`export` reads `RECIPES`, `eval` reads `PRESETS` and the evaluation keys, and `cleandift-deploy
methods` prints `table_rows()` / `as_records()`: all of them views of `CATALOG`, never copies.
Facts that live with an implementation below this package (the CleanDIFT timestep in models/, the
Hedlin settings, the hyperfeature schedule) are referenced from here, not restated.

Light on purpose (no torch): the command line reads it to list and check method names. A new kind
of method (e.g. dense-prediction `probes`) is one more `MethodEntry` (with `export=None` and
`descriptor=None` when those do not apply) plus its factory in `methods.registry`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..descriptors.presets import Preset
from ..errors import CleanDiftError
from ..export.recipes import Recipe
from ..models.taps import DEFAULT_TAP, DEFAULT_TIMESTEP, RESNET_TAP_NAMES
from .hedlin.settings import HedlinSettings

SD_DINO_TAPS = ("us8", "us5", "us2")
"""sd-dino's / GeoAware's s3, s4, s5 (tensors entering LDM output_blocks 8, 5, 2), finest first."""
FUSION_SEED = 42
"""The fixed shared noise of the ODISE extractor (torch Generator seed 42)."""
WINDOW_RADIUS = 5
"""GeoAware's SOFT_EVAL_WINDOW: an 11 x 11 window around the argmax."""
SOFTMAX_BETA = 0.02
"""GeoAware's soft-argmax temperature."""


@dataclass(frozen=True)
class Paper:
    """Where a method comes from and the figure its paper (or CleanDIFT's reproduction) reports."""

    title: str
    code: str
    """Reference repository and the commit read."""
    spair_pck01: float | None
    """SPair-71k PCK@0.1, zero-shot; None when none is reported."""
    pck_note: str = "target box, CleanDIFT paper's reproduction"


@dataclass(frozen=True)
class MethodEntry:
    """Every fact about one method."""

    name: str
    summary: str
    paper: Paper
    backbones: tuple[str, ...]
    evaluation: str
    """The factory `eval pck --method NAME` builds (a key of `methods.registry.METHODS`)."""
    export: Recipe | None = None
    """What `export --method NAME` bakes in; None: not exported through a recipe."""
    descriptor: Preset | None = None
    """How features become descriptors and how matches are read out; None: the method's own."""
    taps: str = ""
    """The taps as the table shows them (the recipe's when there is one)."""
    timestep: str = ""
    """The UNet timestep as the table shows it (noise t, or how a clean t is chosen)."""
    size: str = ""
    readout: str = ""
    facts: Mapping[str, Any] = field(default_factory=dict)
    """Method-specific facts (settings the implementation reads)."""
    settings: tuple[str, ...] = ()
    """The `eval pck --set KEY=VALUE` keys the evaluation reads."""

    def readout_record(self) -> dict[str, Any]:
        """Mode, window and grid mapping of the matches."""
        if self.descriptor is None:
            return {"text": self.readout}
        preset = self.descriptor
        window = preset.mode == "window-softargmax"
        return {
            "text": self.readout,
            "mode": preset.mode,
            "window_radius": WINDOW_RADIUS if window else None,
            "softmax_beta": SOFTMAX_BETA if window else None,
            "grid": preset.grid,
        }

    def ensemble(self) -> str:
        """The ensemble column: noise draws averaged in the graph."""
        if self.export is None or self.export.noise_timestep is None:
            return "-"
        return str(self.export.ensemble)

    def as_record(self) -> dict[str, Any]:
        """The entry as JSON-ready data (`methods --json`)."""
        return {
            "name": self.name,
            "summary": self.summary,
            "paper": asdict(self.paper),
            "backbones": list(self.backbones),
            "taps": self.taps,
            "timestep": self.timestep,
            "ensemble": self.ensemble(),
            "size": self.size,
            "export": None if self.export is None else asdict(self.export),
            "descriptor": None if self.descriptor is None else asdict(self.descriptor),
            "readout": self.readout_record(),
            "evaluation": self.evaluation,
            "settings": list(self.settings),
            "facts": dict(self.facts),
        }


def _recipe_taps(recipe: Recipe) -> str:
    return " ".join(sorted(recipe.taps, key=lambda t: int(t[2:]) if t[2:].isdigit() else 0))


_DIFT = Recipe((DEFAULT_TAP,), int(DEFAULT_TIMESTEP), ensemble=8, latent="sample")
_CLEANDIFT = Recipe((DEFAULT_TAP,), None)
_SD_DINO = Recipe(SD_DINO_TAPS[::-1], 100, seed=FUSION_SEED, image_size=960)
_GEOAWARE = Recipe(SD_DINO_TAPS[::-1], 50, seed=FUSION_SEED, freeu=True, image_size=960)
_IMAGE_ARGMAX = "bilinear to the image, argmax"
_SOFT_KEYS = ("radius", "beta")
"""Window soft-argmax (`--mode window-softargmax`): window radius in cells and temperature."""
_DESCRIPTOR_KEYS = ("sd_size", "dino_size", "pca", "pca_bases", "mode", "dino_source", "dino_arch")
_HEDLIN = HedlinSettings()
_HEDLIN_KEYS = tuple(f.name for f in fields(HedlinSettings))

CATALOG: dict[str, MethodEntry] = {
    entry.name: entry
    for entry in (
        MethodEntry(
            "cleandift",
            "clean latent, the student UNet at its learned t; DIFT's readout",
            Paper(
                "Stracke et al., CleanDIFT: Diffusion Features without Noise",
                "CompVis/cleandift@b070976 (+ branch geoaware-sc-eval@6bc34e1)",
                61.43,
            ),
            ("CleanDIFT SD 2.1",),
            "descriptor",
            export=_CLEANDIFT,
            descriptor=Preset("cleandift", (DEFAULT_TAP,)),
            taps=_recipe_taps(_CLEANDIFT),
            timestep=f"none (clean latent, learned t from {DEFAULT_TIMESTEP:g})",
            size=str(_CLEANDIFT.image_size),
            readout=_IMAGE_ARGMAX,
            settings=_DESCRIPTOR_KEYS + _SOFT_KEYS,
        ),
        MethodEntry(
            "dift",
            "noisy latent at t=261, ensemble of 8 noise draws, cosine argmax on the image",
            Paper(
                "Tang et al., Emergent Correspondence from Image Diffusion",
                "Tsingularity/dift@9421eb2",
                59.57,
            ),
            ("SD 2.1",),
            "descriptor",
            export=_DIFT,
            descriptor=Preset("dift", (DEFAULT_TAP,)),
            taps=_recipe_taps(_DIFT),
            timestep=str(_DIFT.noise_timestep),
            size=str(_DIFT.image_size),
            readout=_IMAGE_ARGMAX,
            settings=_DESCRIPTOR_KEYS + _SOFT_KEYS,
        ),
        MethodEntry(
            "sd-dino",
            "SD + DINOv2 with per-layer co-PCA, nearest neighbour on the 60x60 grid",
            Paper("Zhang et al., A Tale of Two Features", "Junyi42/sd-dino@b85df18", 63.73),
            ("SD 1.5", "DINOv2-B/14"),
            "descriptor",
            export=_SD_DINO,
            descriptor=Preset(
                "sd-dino",
                SD_DINO_TAPS,
                combine="progressive",
                pca_dims=256,
                dino=True,
                grid="cells",
                sd_resize="letterbox",
                sd_size=_SD_DINO.image_size,
            ),
            taps=_recipe_taps(_SD_DINO) + " + dino",
            timestep=str(_SD_DINO.noise_timestep),
            size=f"{_SD_DINO.image_size} / 840",
            readout="NN on the 60x60 grid",
            settings=_DESCRIPTOR_KEYS + _SOFT_KEYS,
        ),
        MethodEntry(
            "geoaware",
            "SD (FreeU) + DINOv2 without PCA, window soft-argmax (GeoAware-SC zero-shot)",
            Paper(
                "Zhang et al., Telling Left from Right (GeoAware-SC), zero-shot",
                "Junyi42/GeoAware-SC@99fd6b6",
                68.64,
            ),
            ("SD 1.5", "DINOv2-B/14"),
            "descriptor",
            export=_GEOAWARE,
            descriptor=Preset(
                "geoaware",
                SD_DINO_TAPS,
                combine="resize",
                dino=True,
                renormalise=True,
                mode="window-softargmax",
                grid="cells",
                sd_resize="letterbox",
                sd_size=_GEOAWARE.image_size,
            ),
            taps=_recipe_taps(_GEOAWARE) + " + dino, FreeU",
            timestep=str(_GEOAWARE.noise_timestep),
            size=f"{_GEOAWARE.image_size} / 840",
            readout=f"window soft-argmax r={WINDOW_RADIUS}, beta={SOFTMAX_BETA}",
            settings=_DESCRIPTOR_KEYS + _SOFT_KEYS,
        ),
        MethodEntry(
            "hyperfeatures",
            "aggregation network over the 12 ResNet residual branches (and timesteps)",
            Paper(
                "Luo et al., Diffusion Hyperfeatures",
                "diffusion-hyperfeatures/diffusion_hyperfeatures@4a5ec2b",
                None,
                "not reported zero-shot",
            ),
            ("SD 1.5",),
            "hyperfeatures",
            taps=f"{len(RESNET_TAP_NAMES)} ResNet residual branches",
            timestep="-1 (one step) or 11 DDIM-inversion steps",
            size="512",
            readout="NN on the aggregated map",
            facts={"schedule": "cleandift_deploy.methods.hyperfeatures.schedule.VARIANTS"},
            settings=_SOFT_KEYS,
        ),
        MethodEntry(
            "hedlin",
            "prompt embeddings optimised per keypoint so cross-attention peaks there",
            Paper(
                "Hedlin et al., Unsupervised Semantic Correspondence Using Stable Diffusion",
                "ubc-vision/LDM_correspondences@97e3246",
                45.4,
                "source box, the paper's own",
            ),
            ("SD 1.4",),
            "hedlin",
            taps="cross-attention, optimised prompts",
            timestep=f"{_HEDLIN.optimise_timestep} / {_HEDLIN.readout_timestep}",
            size=str(_HEDLIN.size),
            readout="argmax of averaged attention",
            facts={"settings": "cleandift_deploy.methods.hedlin.settings.HedlinSettings"},
            settings=_HEDLIN_KEYS,
        ),
        MethodEntry(
            "features",
            "any exported artifact, one tap, upsample-then-match readout",
            Paper("-", "-", None, "-"),
            ("any exported artifact",),
            "features",
            taps="any (default us6)",
            timestep="as exported",
            size="as exported",
            readout=_IMAGE_ARGMAX + " or window soft-argmax",
            settings=("size", "resize", "text_encoder", *_SOFT_KEYS),
        ),
    )
}

METHOD_NAMES: tuple[str, ...] = tuple(CATALOG)
RECIPES: dict[str, Recipe] = {n: e.export for n, e in CATALOG.items() if e.export is not None}
"""`export --method NAME`: the methods with an export recipe."""
PRESETS: dict[str, Preset] = {
    n: e.descriptor for n, e in CATALOG.items() if e.descriptor is not None
}
"""The descriptor presets (`eval pck --method NAME` for the descriptor methods)."""


def get_method(name: str) -> MethodEntry:
    """The catalog entry `name`, or one line listing the methods."""
    try:
        return CATALOG[name]
    except KeyError:
        raise CleanDiftError(
            f"unknown method {name!r}: choose one of {', '.join(METHOD_NAMES)}"
        ) from None


def get_preset(name: str) -> Preset:
    """The descriptor preset of method `name`, or one line listing them."""
    try:
        return PRESETS[name]
    except KeyError:
        raise CleanDiftError(
            f"unknown descriptor preset {name!r}: use one of {', '.join(PRESETS)}"
        ) from None


def method_details(entry: MethodEntry) -> dict[str, Any]:
    """The entry's record with the implementation facts it references resolved (imports the
    implementation: the hyperfeature schedule needs torch)."""
    record = entry.as_record()
    if entry.name == "hedlin":
        from .hedlin.settings import HedlinSettings

        record["facts"] = {"settings": asdict(HedlinSettings())}
    elif entry.name == "hyperfeatures":
        from .hyperfeatures.schedule import VARIANTS

        record["facts"] = {
            "variants": {n: list(v.timesteps()) for n, v in VARIANTS.items()},
        }
    return record


TABLE_COLUMNS = ("method", "backbones", "taps", "t", "ensemble", "size", "SPair PCK@0.1")


def table_rows() -> list[tuple[str, ...]]:
    """One row per method for `cleandift-deploy methods`, in `TABLE_COLUMNS` order."""
    rows: list[tuple[str, ...]] = []
    for entry in CATALOG.values():
        pck = entry.paper.spair_pck01
        shown = "-" if pck is None else f"{pck:.2f}"
        if pck is not None and entry.paper.pck_note.startswith("source"):
            shown += " (source box)"
        rows.append(
            (
                entry.name,
                " + ".join(entry.backbones),
                entry.taps,
                entry.timestep,
                entry.ensemble(),
                entry.size,
                shown,
            )
        )
    return rows


def as_records() -> list[dict[str, Any]]:
    """Every entry as data (`cleandift-deploy methods --json`)."""
    return [entry.as_record() for entry in CATALOG.values()]


def settings_help() -> str:
    """The `--set` keys of every method, for `eval pck --help`."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for entry in CATALOG.values():
        groups.setdefault(entry.settings, []).append(entry.name)
    return "; ".join(f"{'/'.join(names)}: {', '.join(keys)}" for keys, names in groups.items())
