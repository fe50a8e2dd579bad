"""`cleandift-deploy eval`: PCK on SPair-71k / PF-PASCAL / PF-WILLOW and a known-truth set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..errors import CleanDiftError
from ..methods.catalog import METHOD_NAMES, PRESETS, settings_help
from .options import method_callback, output_option, precision_options, source_option

DATASET_CHOICES = ("spair", "pfpascal", "pfwillow")
ALPHAS = "0.01,0.05,0.1,0.15"


def parse_alphas(text: str) -> tuple[float, ...]:
    """`0.05,0.1` -> (0.05, 0.1); every alpha in (0, 1]."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise CleanDiftError(f"--alpha {text} is not a comma-separated list of numbers") from None
    if not values or not all(0 < v <= 1 for v in values):
        raise CleanDiftError(f"--alpha {text}: give values in (0, 1], e.g. {ALPHAS}")
    return values


def parse_pairs(items: tuple[str, ...], option: str) -> dict[str, str]:
    """`KEY=VALUE` items as a dict, refusing any without `=`."""
    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CleanDiftError(f"{option} {item}: write KEY=VALUE")
        parsed[key.strip()] = value.strip()
    return parsed


def parse_filters(items: tuple[str, ...]) -> dict[str, int]:
    """`--filter occlusion=0` items as {field: int}."""
    parsed = parse_pairs(items, "--filter")
    try:
        return {key: int(value) for key, value in parsed.items()}
    except ValueError:
        raise CleanDiftError("--filter values are integers, e.g. --filter occlusion=0") from None


def eval_method_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    """Refuse an unknown `--method` while parsing (before the data folder is read); the old
    `descriptor` still passes (it needs `--descriptor`)."""
    from ..methods.registry import method_names

    return method_callback((*method_names(), "descriptor"))(ctx, param, value)


@click.group("eval")
def eval_group() -> None:
    """Evaluate correspondences: PCK on annotated pairs, known-truth sets."""


@eval_group.command("pck")
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Dataset root.")
@click.option("--dataset", required=True, type=click.Choice(DATASET_CHOICES))
@click.option(
    "--method",
    default=None,
    metavar="NAME",
    callback=eval_method_callback,
    help=f"Method to evaluate (default: features). One of: {', '.join(METHOD_NAMES)} "
    "(`cleandift-deploy methods` lists them).",
)
@click.option("--model", type=click.Path(path_type=Path), help="Artifact (.onnx/.engine).")
@click.option("--dino", type=click.Path(path_type=Path), help="Second artifact (DINOv2).")
@click.option("--backend", default="auto", show_default=True, help="Runtime backend or torch.")
@click.option("--tap", default=None, help="Tap to match (default: us6, else the last).")
@click.option(
    "--mode", type=click.Choice(("nn", "window-softargmax")), default="nn", show_default=True
)
@click.option(
    "--descriptor",
    default=None,
    hidden=True,
    callback=method_callback(PRESETS),
    help="Old spelling of --method for the descriptor methods.",
)
@source_option("--source", help="Model source for PyTorch")
@click.option("--arch", default=None, help="Architecture for --source / --random-init.")
@click.option("--random-init", is_flag=True, help="Random weights (with --arch).")
@click.option("--checkpoint", type=click.Path(path_type=Path), help="Method checkpoint.")
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="KEY=VALUE",
    help=f"Method setting (repeatable). Keys: {settings_help()}.",
)
@click.option("--alpha", default=ALPHAS, show_default=True, help="Comma-separated alphas.")
@click.option(
    "--convention",
    type=click.Choice(("bbox", "img", "kps")),
    default=None,
    help="PCK reference length (default: spair bbox, pfpascal img, pfwillow kps).",
)
@click.option("--split", default="test", show_default=True)
@click.option("--categories", default=None, help="Comma-separated categories (default: all).")
@click.option("--limit", type=int, default=None, help="At most N pairs per category.")
@click.option("--filter", "filters", multiple=True, help="SPair difficulty FIELD=VALUE.")
@click.option("--cache", type=click.Path(path_type=Path), help="Feature cache (default OUT/cache).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--pictures/--no-pictures", default=True, show_default=True)
@output_option("Output folder.")
@precision_options
def pck_command(**kwargs: object) -> None:
    """PCK of a method's matches; writes results.json, predictions.jsonl, results.md, pictures."""
    from .eval_pck import run_pck

    run_pck(**kwargs)  # type: ignore[arg-type]


@eval_group.command("make-synthetic")
@output_option("Output folder.")
@click.option("--pairs", type=int, default=40, show_default=True, help="Test pairs.")
@click.option("--train-pairs", type=int, default=None, help="trn pairs (default: --pairs).")
@click.option("--val-pairs", type=int, default=None, help="val pairs (default: --pairs / 4).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-side", type=int, default=None, help="Shrink photos to this longer side.")
def make_synthetic_command(
    out: Path,
    pairs: int,
    train_pairs: int | None,
    val_pairs: int | None,
    seed: int,
    max_side: int | None,
) -> None:
    """An SPair-layout set from scikit-image's photographs and random warps of them."""
    from rich.progress import Progress

    from ..eval.photoset import make_synthetic

    counts = {
        "trn": pairs if train_pairs is None else train_pairs,
        "val": max(1, pairs // 4) if val_pairs is None else val_pairs,
        "test": pairs,
    }
    if min(counts.values()) < 0 or pairs < 1:
        raise CleanDiftError("--pairs must be at least 1 and the split sizes non-negative")
    if max_side is not None and max_side < 64:
        raise CleanDiftError(f"--max-side {max_side} is too small: use 64 or more")
    with Progress() as progress:
        task = progress.add_task("writing pairs", total=sum(counts.values()))
        make_synthetic(out, counts, seed, lambda: progress.advance(task), max_side)
    summary = ", ".join(f"{split} {n}" for split, n in counts.items())
    click.echo(f"wrote {out} (SPair-71k layout; pairs: {summary})")


COMMANDS: list[click.Command] = [eval_group]
