"""CLI verb `bench`: latency percentiles, throughput and memory of any artifact on any backend."""

from __future__ import annotations

from pathlib import Path

import click

from ..runtime.selection import BACKENDS
from .options import parse_batch_sizes, parse_size, precision_options, precision_request

DEFAULT_BATCHES = (1, 2, 4, 8)


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True)
@click.option("--device", default=None, help="cpu or cuda (default: the backend's best here).")
@click.option(
    "--batch",
    "batch",
    default=None,
    help="Batch sizes, e.g. 1,2,4,8 (default: those of 1,2,4,8 inside the profile).",
)
@click.option(
    "--image-size", "sizes", multiple=True, help="HxW, repeatable (default: profile opt)."
)
@click.option("--warmup", type=int, default=3, show_default=True)
@click.option("--iterations", type=int, default=None, help="Timed runs per case (default 20).")
@click.option("--seconds", type=float, default=None, help="Time budget per case instead.")
@click.option("--reference", is_flag=True, help="Also time the PyTorch reference; ratio per row.")
@click.option("--no-flops", is_flag=True, help="Skip counting the graph's FLOPs.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), default=None)
@click.option("--markdown", type=click.Path(path_type=Path), default=None)
@click.option("--plot", "png", type=click.Path(path_type=Path), default=None)
@precision_options
def bench(
    artifact: Path,
    backend: str,
    device: str | None,
    batch: str | None,
    sizes: tuple[str, ...],
    warmup: int,
    iterations: int | None,
    seconds: float | None,
    reference: bool,
    no_flops: bool,
    json_path: Path | None,
    markdown: Path | None,
    png: Path | None,
    precision: str,
    calibration_images: Path | None,
    min_agreement: float,
) -> None:
    """Latency p50/p90/p99, images/s, achieved TFLOP/s and peak memory per batch and size."""
    from rich.console import Console

    from ..errors import CleanDiftError
    from ..manifest import artifact_manifest
    from ..runtime.bench import BenchBudget, BenchCase, check_case
    from ..runtime.bench_report import BenchRequest, print_table, run_bench, write_outputs
    from ..runtime.selection import artifact_kind

    if iterations is not None and seconds is not None:
        raise CleanDiftError("give --iterations or --seconds, not both")
    if (iterations is not None and iterations < 1) or warmup < 0:
        raise CleanDiftError("--iterations must be at least 1 and --warmup at least 0")
    artifact_kind(artifact)
    manifest = artifact_manifest(artifact)
    batches = (
        parse_batch_sizes(batch)
        or tuple(b for b in DEFAULT_BATCHES if manifest.batch.contains(b))
        or (manifest.batch.min,)
    )
    shapes = [parse_size(s) for s in sizes] or [(manifest.height.opt, manifest.width.opt)]
    budget = BenchBudget(warmup, None if seconds is not None else iterations or 20, seconds)
    cases = tuple(BenchCase(b, h, w) for h, w in shapes for b in batches)
    for case in cases:
        check_case(manifest, case)
    wanted = precision_request(precision, calibration_images, min_agreement)
    request = BenchRequest(
        artifact, backend, device, cases, budget, reference, not no_flops, wanted
    )
    report = run_bench(request)
    console = Console()
    selection = report["selection"]
    Console(stderr=True).print(
        f"engine: {selection['backend']} ({selection['reason']})", markup=False, highlight=False
    )
    print_table(report, console if console.is_terminal else Console(width=160))
    click.echo(report["denormals"])
    write_outputs(report, json_path, markdown, png)


COMMANDS: list[click.Command] = [bench]
