"""CLI verbs of Diffusion Hyperfeatures: `train-hyperfeatures` (and the one-step export)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from .options import image_size_option, model_source_options, output_option, source_option

console = Console(stderr=True)
VARIANT_NAMES = ("one-step", "multi-step")


@click.command("train-hyperfeatures")
@model_source_options
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    required=True,
    help="SPair-71k root, or any set in its layout (e.g. `eval make-synthetic`).",
)
@output_option("Run folder.")
@click.option("--split", default="trn", show_default=True, help="Pair split to train on.")
@click.option("--categories", multiple=True, help="Only these categories (repeatable).")
@click.option("--limit", type=int, help="At most N pairs per category.")
@click.option("--steps", type=int, default=5000, show_default=True, help="One pair per step.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="AdamW learning rate.")
@click.option("--weight-decay", type=float, default=0.0, show_default=True)
@click.option(
    "--variant",
    type=click.Choice(VARIANT_NAMES),
    default="one-step",
    show_default=True,
    help="One UNet call at t=-1, or 50-step DDIM inversion keeping 11 timesteps.",
)
@click.option(
    "--latent",
    type=click.Choice(["sample", "mean"]),
    default="sample",
    show_default=True,
    help="VAE posterior sample (the reference) or mean (what the exported graph computes).",
)
@click.option("--image-size", type=int, help="Square image side (default: the architecture's).")
@click.option(
    "--cache-dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True
)
@click.option("--cache", type=click.Path(path_type=Path), help="Feature cache (OUT/feature-cache).")
@click.option("--save-every", type=int, default=500, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
@click.option("--resume", is_flag=True, help="Continue the run saved in --out.")
@click.option(
    "--batch-size", type=int, default=1, show_default=True, help="Pairs per step (global)."
)
@click.option(
    "--nproc-per-node",
    type=int,
    default=1,
    show_default=True,
    help="Processes on this machine (DDP via torch's launcher; or run under torchrun).",
)
@click.pass_context
def train_hyperfeatures(
    ctx: click.Context,
    source: str | None,
    arch: str | None,
    random_init: bool,
    seed: int,
    data: Path,
    out: Path,
    split: str,
    categories: tuple[str, ...],
    limit: int | None,
    steps: int,
    lr: float,
    weight_decay: float,
    variant: str,
    latent: str,
    image_size: int | None,
    cache_dtype: str,
    cache: Path | None,
    save_every: int,
    device: str,
    resume: bool,
    batch_size: int,
    nproc_per_node: int,
) -> None:
    """Train the hyperfeature aggregation network on keypoint pairs (UNet maps cached once).

    `--nproc-per-node N` (or `torchrun ... -m cleandift_deploy train-hyperfeatures`) trains with
    DDP over N processes; `--batch-size` is then split over them."""
    from ..errors import CleanDiftError
    from ..methods.hyperfeatures.extract import ExtractSettings
    from ..methods.hyperfeatures.schedule import get_variant
    from ..methods.hyperfeatures.train import HyperTrainSettings
    from ..methods.hyperfeatures.training_run import RunOptions, run_training
    from ..models.loading import resolve_source
    from ..train.distributed import session
    from ..train.progress import training_progress

    if steps < 1 or save_every < 1:
        raise CleanDiftError("--steps and --save-every must be at least 1")
    if nproc_per_node != 1:
        from ..train.launch import check_launch, launch_local
        from .train import rank_args

        check_launch(nproc_per_node, batch_size)
        launch_local(nproc_per_node, rank_args(ctx))
        return
    loaded = resolve_source(source, arch=arch, random_init=random_init, seed=seed)
    with session(device) as world:
        options = RunOptions(
            data=data,
            out=out,
            split=split,
            categories=categories or None,
            limit=limit,
            cache=cache,
            resume=resume,
            device=str(world.device),
            extract=ExtractSettings(get_variant(variant), latent, image_size, seed, cache_dtype),
            train=HyperTrainSettings(steps, lr, weight_decay, seed, save_every, batch_size),
        )
        if not world.main:
            run_training(loaded, options, _quiet, _quiet, world)
            return
        with _cache_progress() as on_cache, training_progress(0, steps, console) as on_step:
            result = run_training(loaded, options, on_cache, on_step, world)
    console.print(
        f"step {len(result.history)}: loss {result.history[-1]:.4f} "
        f"(first {result.history[0]:.4f}); UNet maps computed for {result.extractions} images"
    )
    for name, path in result.files.items():
        console.print(f"{name}: {path}")


def _quiet(*_: object) -> None:
    """No progress on ranks other than 0."""


@contextmanager
def _cache_progress() -> Iterator[Callable[[int, int], None]]:
    """A bar over the images whose UNet maps are computed (or found) before training."""
    columns = (TextColumn("[bold]UNet maps"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("maps", total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)


@click.command("export-hyperfeatures")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@source_option("--source", help="The UNet it was trained on (default: the one its file names)")
@output_option()
@image_size_option("Optimisation size (px):")
@click.option("--batch", default="1", show_default=True, help="MIN:OPT:MAX batch range.")
@click.option("--size-range", nargs=2, metavar="HMINxWMIN HMAXxWMAX", help="Dynamic size range.")
@click.option("--opset", type=int, default=17, show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True)
@click.option("--no-agreement", is_flag=True, help="Skip the ONNX Runtime agreement check.")
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
def export_hyperfeatures(
    checkpoint: Path,
    source: str | None,
    out: Path,
    image_size: tuple[int, int] | None,
    batch: str,
    size_range: tuple[str, str] | None,
    opset: int,
    precision: str,
    no_agreement: bool,
    force: bool,
) -> None:
    """Export the one-step hyperfeature graph (image -> UNet taps -> aggregation) to ONNX."""
    from ..export.exporter import export_onnx
    from ..methods.hyperfeatures.checkpoint import load_aggregator, unet_for
    from ..methods.hyperfeatures.graph import hyperfeature_spec
    from ..models.graph_options import ExportOptions
    from .export import print_agreement
    from .options import parse_batch, parse_size_range

    network, info = load_aggregator(checkpoint)
    loaded = unet_for(info, source)
    options = ExportOptions(
        image_size=image_size or (info.image_size, info.image_size),
        batch=parse_batch(batch),
        size_range=parse_size_range(size_range),
        opset=opset,
        precision=precision,
        force=force,
        check_agreement=not no_agreement,
    )
    spec = hyperfeature_spec(loaded, network, info, options, checkpoint)
    with console.status(f"exporting the one-step hyperfeature graph ({precision}) to {out}"):
        manifest = export_onnx(loaded, out, options, spec)
    console.print(f"wrote {out}: {manifest.build['export_seconds']} s")
    print_agreement(manifest)


COMMANDS: list[click.Command] = [train_hyperfeatures, export_hyperfeatures]
