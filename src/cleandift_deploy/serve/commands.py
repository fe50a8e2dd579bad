"""CLI verbs of this subpackage, registered by `cleandift_deploy.cli`: `serve`."""

from __future__ import annotations

import signal
import time
from dataclasses import replace
from pathlib import Path

import click

from ..runtime.selection import BACKENDS

MEGABYTE = 1 << 20


def _replica_device(artifact: Path, backend: str, device: str | None) -> str:
    from ..runtime.selection import artifact_kind, choose_backend, default_device

    name = choose_backend(artifact_kind(artifact)) if backend == "auto" else backend
    return device or default_device(name)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _serve_until_interrupted(url: str) -> None:
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as cleanly as Ctrl-C
    click.echo(f"serving at {url} (POST /features, POST /match, GET /readyz); Ctrl-C to stop")
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        click.echo("stopping", err=True)


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True)
@click.option("--device", default=None, help="cpu or cuda (default: the backend's best here).")
@click.option("--replicas", type=click.IntRange(1), default=1, show_default=True)
@click.option(
    "--max-batch", type=click.IntRange(1), default=8, show_default=True, help="Images per run."
)
@click.option(
    "--batch-wait-ms",
    type=click.FloatRange(0),
    default=10.0,
    show_default=True,
    help="How long a batch waits to fill.",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--address", default=None, help="Ray cluster address (default: a local instance).")
@click.option("--gpus-per-replica", type=float, default=None, help="Default: 1 on CUDA, else 0.")
@click.option("--threads", type=click.IntRange(1), default=None, help="CPU threads per replica.")
@click.option("--max-request-mb", type=click.IntRange(1), default=32, show_default=True)
@click.option("--ready-timeout", type=click.FloatRange(1), default=600.0, show_default=True)
def serve(
    artifact: Path,
    backend: str,
    device: str | None,
    replicas: int,
    max_batch: int,
    batch_wait_ms: float,
    host: str,
    port: int,
    address: str | None,
    gpus_per_replica: float | None,
    threads: int | None,
    max_request_mb: int,
    ready_timeout: float,
) -> None:
    """HTTP feature server on Ray Serve with dynamic batching, in the foreground until Ctrl-C."""
    from .app import FeatureService, ServeConfig
    from .hub import AppConfig
    from .inputs import Limits
    from .ray_serve import ReplicaResources, deploy, wait_ready
    from .ray_session import local_cpus, ray_session

    device = _replica_device(artifact, backend, device)
    gpus = gpus_per_replica if gpus_per_replica is not None else float(device == "cuda")
    limits = Limits(max_request_bytes=max_request_mb * MEGABYTE)
    config = ServeConfig(
        str(artifact.resolve()), backend, device, threads, max_batch, batch_wait_ms, limits
    )
    FeatureService(config)  # refuse a bad artifact here, in one line, before Ray starts
    with ray_session(address, replicas) as local:
        if local and threads is None:
            config = replace(config, threads=max(1, local_cpus(replicas) // replicas))
        resources = ReplicaResources(replicas, 1.0, gpus)
        handle = deploy(AppConfig((config,), limits=limits), resources, host, port)
        try:
            wait_ready(handle, ready_timeout)
            _serve_until_interrupted(f"http://{host}:{port}")
        finally:
            from ray import serve as ray_serve

            ray_serve.shutdown()


COMMANDS: list[click.Command] = [serve]
