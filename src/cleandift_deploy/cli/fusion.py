"""CLI verb `fit-pca`: PCA bases for sd-dino descriptors, fitted once on a set of images."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.progress import Progress

from .options import output_option, split_taps, taps_option

console = Console(stderr=True)


@click.command("fit-pca")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@output_option()
@taps_option("Taps to fit.", default=("us8", "us5", "us2"))
@click.option("--dims", type=int, default=256, show_default=True)
@click.option(
    "--image-size",
    "--size",
    "size",
    type=int,
    default=960,
    show_default=True,
    help="Image side (px).",
)
@click.option("--backend", default="auto", show_default=True)
@click.option("--force", is_flag=True, help="Overwrite an existing output.")
def fit_pca_command(
    model: Path,
    inputs: tuple[Path, ...],
    out: Path,
    taps: tuple[str, ...],
    dims: int,
    size: int,
    backend: str,
    force: bool,
) -> None:
    """Fit one PCA basis per tap on the images (files or folders) for `--set pca_bases=OUT`."""
    from ..atomic import refuse_existing
    from ..runtime.extract_files import plan_jobs
    from ..runtime.pca_fit import fit_and_save

    refuse_existing(out, force)
    images = [job.image for job in plan_jobs(list(inputs), Path())]  # folders walked as extract
    with Progress(console=console) as progress:
        task = progress.add_task("fitting PCA", total=len(images))
        bases = fit_and_save(
            model, images, split_taps(taps) or (), dims, out, backend=backend,
            image_size=(size, size), advance=lambda: progress.advance(task),
        )  # fmt: skip
    shapes = ", ".join(f"{t}: {tuple(b.components.shape)}" for t, b in bases.items())
    console.print(f"wrote {out} from {len(images)} images ({shapes})")


COMMANDS: list[click.Command] = [fit_pca_command]
