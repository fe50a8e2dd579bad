"""CLI verbs of this subpackage, registered by `cleandift_deploy.cli`: `extract`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console

from ..errors import CleanDiftError
from ..runtime.selection import BACKENDS
from .lazy_choice import LazyChoice
from .options import (
    image_size_option,
    output_option,
    precision_options,
    precision_request,
    split_taps,
    taps_option,
)

if TYPE_CHECKING:
    from ..runtime.engine_choice import Selection
    from ..runtime.extract_files import ExtractReport


def _say_selection(selection: Selection) -> None:
    """Which engine runs and why (with the bf16 gate's agreement when it was measured)."""
    Console(stderr=True).print(
        f"engine: {selection.backend} ({selection.reason})", markup=False, highlight=False
    )


def _summarise(report: ExtractReport, out: Path) -> None:
    """One unwrapped line when all went well or one image failed; a list under it for more."""
    skipped = len(report.skipped)
    line = f"{len(report.written)} written, {skipped} skipped"
    if skipped:
        line += f" (already in {out}; --overwrite to redo)"
    if not report.failed:
        click.echo(line, err=True)
        return
    advice = "fix or remove {}, then run again (what was written is kept and skipped)"
    if len(report.failed) == 1:
        reason = report.failed[0][1]
        line += f", 1 unreadable: {reason}: {advice.format('it')}"
        click.echo(line, err=True)
        return
    line += f", {len(report.failed)} unreadable: {advice.format('them')}:"
    click.echo(line, err=True)
    for _, reason in report.failed:
        click.echo(f"  {reason}", err=True)


@click.command()
@click.option(
    "--model",
    "model",
    required=True,
    help="Artifact (.onnx, .plan, .engine) or a model source (diffusers folder, .safetensors).",
)
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@output_option("Output folder.")
@taps_option("Taps to extract (default: all of the model's).")
@click.option("--batch-size", type=int, default=None, help="Images per run (default: model max).")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True)
@click.option("--device", default=None, help="cpu or cuda (default: the backend's best here).")
@image_size_option("Model input size:")
@click.option(
    "--resize",
    type=LazyChoice("cleandift_deploy.runtime.preprocess:RESIZE_POLICIES"),
    default=None,
    help="Fit policy.",
)
@click.option("--overwrite", is_flag=True, help="Redo outputs that already exist.")
@click.option("--pca", is_flag=True, help="Also save a feature-PCA picture beside each output.")
@click.option(
    "--ray", "use_ray", is_flag=True, help="Run on Ray Data workers (local or --address)."
)
@click.option("--address", default=None, help="With --ray: a Ray cluster (default: local).")
@click.option("--workers", type=click.IntRange(1), default=None, help="With --ray: actors [1].")
@click.option("--gpus-per-worker", type=click.FloatRange(0), default=None, help="With --ray.")
@click.option(
    "--cuda-graphs/--no-cuda-graphs",
    default=True,
    show_default=True,
    help="TensorRT engines: replay CUDA graphs per input shape.",
)
@precision_options
def extract(
    model: str,
    inputs: tuple[Path, ...],
    out: Path,
    taps: tuple[str, ...],
    batch_size: int | None,
    backend: str,
    device: str | None,
    image_size: tuple[int, int] | None,
    resize: str | None,
    overwrite: bool,
    pca: bool,
    use_ray: bool,
    address: str | None,
    workers: int | None,
    gpus_per_worker: float | None,
    cuda_graphs: bool,
    precision: str,
    calibration_images: Path | None,
    min_agreement: float,
) -> None:
    """Features of image files and folders: one safetensors file per image in --out."""
    from ..runtime.extract_files import extract_files, plan_jobs

    wanted = precision_request(precision, calibration_images, min_agreement)
    jobs = plan_jobs(list(inputs), out)
    if use_ray:
        from ..serve.ray_extract import ModelSpec, RayOptions, ray_extract_files

        spec = ModelSpec(
            model, backend, device, split_taps(taps), image_size, resize, batch_size, wanted
        )
        options = RayOptions(address, workers or 1, gpus_per_worker or 0.0)
        report = ray_extract_files(spec, jobs, options, overwrite=overwrite, pca=pca)
    elif address is not None or workers is not None or gpus_per_worker is not None:
        raise CleanDiftError("--address, --workers and --gpus-per-worker need --ray")
    else:
        from ..runtime.opening import open_model

        extractor = open_model(
            model,
            backend,
            device,
            split_taps(taps),
            image_size,
            resize,
            batch_size,
            cuda_graphs=cuda_graphs,
            precision=wanted,
        )
        _say_selection(extractor.selection)
        report = extract_files(extractor, jobs, overwrite=overwrite, pca=pca)
    _summarise(report, out)
    if report.failed:
        raise SystemExit(1)


COMMANDS: list[click.Command] = [extract]
