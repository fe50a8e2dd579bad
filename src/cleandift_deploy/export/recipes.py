"""Export recipes: the defaults `export --method NAME` fills in for a method (taps, latent, noise
timestep, ensemble, seed, FreeU, size, prompt); any option given explicitly wins.

The recipes themselves are entries of `cleandift_deploy.methods.catalog` (the `export` field of
each method), read there from the reference code; this module holds the type and applies one.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Any

from ..errors import CleanDiftError
from ..models.graph_options import ExportOptions


@dataclass(frozen=True)
class Recipe:
    """The export defaults of one method."""

    taps: tuple[str, ...]
    noise_timestep: int | None
    ensemble: int = 1
    latent: str = "mean"
    seed: int = 0
    freeu: bool = False
    image_size: int = 768
    prompt: str = ""
    """The prompt whose embedding is baked in (every method's reference: the empty prompt)."""


def with_recipe(
    options: ExportOptions, recipe: Recipe | None, given: Collection[str], **args: Any
) -> ExportOptions:
    """`options` with the recipe's defaults (where the option, named in `given` when the user
    gave it, was not given) and the noise and FreeU settings of the CLI's noise arguments."""
    if recipe is not None:
        if "taps" not in given:
            options = replace(options, taps=recipe.taps)
        if "prompt" not in given:
            options = replace(options, prompt=recipe.prompt)
        if "image_size" not in given and options.size_range is None:
            options = replace(options, image_size=(recipe.image_size, recipe.image_size))
    noise = _noise(recipe, args)
    if noise is not None and noise.random:
        options = replace(options, check_agreement=False)  # fresh noise: nothing to agree with
    return replace(options, noise=noise, freeu=_freeu(recipe, args))


def _noise(recipe: Recipe | None, args: dict[str, Any]) -> Any:
    from ..models.noise import NoiseSpec

    def pick(name: str, fallback: Any) -> Any:
        return fallback if args[name] is None else args[name]

    timestep = pick("noise_timestep", recipe.noise_timestep if recipe else None)
    if timestep is None:
        stray = [
            f"--{n.replace('_', '-')}" for n in ("ensemble", "noise_seed", "latent") if args[n]
        ]
        if stray or args["random_noise"]:
            used = ", ".join(stray + (["--random-noise"] if args["random_noise"] else []))
            raise CleanDiftError(f"{used}: noisy features only; add --noise-timestep T")
        return None
    default_latent = recipe.latent if recipe and recipe.noise_timestep is not None else "sample"
    return NoiseSpec(
        timestep=timestep,
        ensemble=pick("ensemble", recipe.ensemble if recipe else 1),
        seed=pick("noise_seed", recipe.seed if recipe else 0),
        latent=pick("latent", default_latent),
        random=bool(args["random_noise"]),
    )


def _freeu(recipe: Recipe | None, args: dict[str, Any]) -> Any:
    from ..models.freeu import FreeU

    enabled = args["freeu"]
    if enabled is None:
        enabled = bool(args["freeu_factors"]) or (recipe is not None and recipe.freeu)
    if not enabled:
        return None
    return FreeU(*args["freeu_factors"]) if args["freeu_factors"] else FreeU()
