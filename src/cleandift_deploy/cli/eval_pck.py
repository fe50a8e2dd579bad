"""The body of `eval pck`: read pairs, build the method, evaluate, write the report."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ..errors import CleanDiftError
from ..eval.cache import FeatureCache
from ..eval.datasets import load_pairs
from ..eval.pck import DEFAULT_CONVENTION
from ..eval.protocol import MethodOptions
from ..eval.report import draw_extremes, results_document, write_report
from ..eval.scoring import evaluate
from ..methods.catalog import PRESETS
from ..methods.registry import build_method
from .eval import parse_alphas, parse_filters, parse_pairs
from .options import precision_request, renamed_to_method


def eval_method_name(method: str | None, descriptor: str | None) -> str:
    """The method to evaluate: `--method` (default features), or the preset of the old
    `--descriptor P` / `--method descriptor --descriptor P` spelling, with a notice."""
    if method == "descriptor":
        if descriptor is None:
            raise CleanDiftError(
                f"--method descriptor is now --method PRESET: one of {', '.join(PRESETS)}"
            )
        method = None
    return renamed_to_method("--descriptor", descriptor, method) or "features"


def run_pck(
    *,
    data: Path,
    dataset: str,
    method: str | None,
    model: Path | None,
    dino: Path | None,
    backend: str,
    tap: str | None,
    mode: str,
    descriptor: str | None,
    source: Path | None,
    arch: str | None,
    random_init: bool,
    checkpoint: Path | None,
    settings: tuple[str, ...],
    alpha: str,
    convention: str | None,
    split: str,
    categories: str | None,
    limit: int | None,
    filters: tuple[str, ...],
    cache: Path | None,
    seed: int,
    pictures: bool,
    out: Path,
    precision: str,
    calibration_images: Path | None,
    min_agreement: float,
) -> None:
    """Evaluate one method on one dataset split and write everything to `out`."""
    name = eval_method_name(method, descriptor)
    alphas = parse_alphas(alpha)
    chosen = [c.strip() for c in categories.split(",")] if categories else None
    samples = load_pairs(data, dataset, split, chosen, limit, parse_filters(filters))
    options = MethodOptions(
        model=model, dino=dino, backend=backend, tap=tap, mode=mode,
        source=source, arch=arch, random_init=random_init, checkpoint=checkpoint,
        settings=parse_pairs(settings, "--set"), cache=cache or out / "cache", seed=seed,
        precision=precision_request(precision, calibration_images, min_agreement),
    )  # fmt: skip
    started = time.perf_counter()
    matcher = build_method(name, options)
    convention = convention or DEFAULT_CONVENTION[dataset]
    evaluation = evaluate(matcher, samples, alphas, convention)
    header = {"dataset": dataset, "split": split, "convention": convention, "method": name}
    document = results_document(evaluation, header, matcher.describe(), alphas)
    document["seconds"] = round(time.perf_counter() - started, 3)
    feature_cache = getattr(matcher, "cache", None)
    if isinstance(feature_cache, FeatureCache):
        document["cache"] = {"extractions": feature_cache.extractions, "hits": feature_cache.hits}
    write_report(out, document, evaluation, alphas)
    if pictures:
        draw_extremes(out, evaluation)
    key = "0.1" if "0.1" in evaluation.pck else next(iter(evaluation.pck))
    top = evaluation.pck[key]
    click.echo(
        f"{dataset} {split}: {len(samples)} pairs, PCK@{key} ({convention}) "
        f"{100 * top['per_image']:.2f} per image, {100 * top['per_point']:.2f} per point; "
        f"wrote {out / 'results.json'}"
    )
