"""CLI verb `triton-repo`: a Triton Inference Server model repository from exported artifacts."""

from __future__ import annotations

from pathlib import Path

import click

from .options import output_option


@click.command("triton-repo")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@output_option("Repository folder.", dest="repo")
@click.option("--name", default=None, help="Model name (default: the artifact's file stem).")
@click.option("--max-batch", type=int, default=None, help="Default: the profile's largest batch.")
@click.option("--preferred-batch", default=None, help="Comma-separated preferred batch sizes.")
@click.option("--queue-delay-us", type=int, default=100, show_default=True)
@click.option("--instances", type=int, default=1, show_default=True, help="Instances per device.")
@click.option(
    "--kind",
    type=click.Choice(["gpu", "cpu"]),
    default="gpu",
    show_default=True,
    help="Instance kind for ONNX models (TensorRT models always run on GPUs).",
)
@click.option("--cuda-graphs", is_flag=True, help="CUDA graphs for TensorRT models.")
@click.option("--force", is_flag=True, help="Replace models that already exist in the repo.")
def triton_repo(
    artifacts: tuple[Path, ...],
    repo: Path,
    name: str | None,
    max_batch: int | None,
    preferred_batch: str | None,
    queue_delay_us: int,
    instances: int,
    kind: str,
    cuda_graphs: bool,
    force: bool,
) -> None:
    """Write a Triton model repository (config.pbtxt checked against Triton's schema)."""
    from ..manifest import artifact_manifest
    from ..serve.triton_config import RepoOptions, batching_note
    from ..serve.triton_repo import write_repository
    from .options import parse_batch_sizes

    options = RepoOptions(
        max_batch=max_batch,
        preferred_batch=parse_batch_sizes(preferred_batch),
        queue_delay_us=queue_delay_us,
        instances=instances,
        kind=kind,
        cuda_graphs=cuda_graphs,
    )
    for folder in write_repository(list(artifacts), repo, options, name=name, force=force):
        click.echo(f"wrote {folder}")
    notes = {batching_note(artifact_manifest(p), options) for p in artifacts}
    for note in sorted(n for n in notes if n):
        click.echo(f"note: {note}", err=True)
    click.echo(f"serve with: tritonserver --model-repository {repo.resolve()}")


COMMANDS: list[click.Command] = [triton_repo]
