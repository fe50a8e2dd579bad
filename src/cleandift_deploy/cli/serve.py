"""`serve`: the feature server and the correspondence page (local uvicorn server, or Ray Serve)."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..runtime.selection import BACKENDS
from .options import precision_options, precision_request

if TYPE_CHECKING:
    from ..serve.hub import AppConfig

MEGABYTE = 1 << 20


def _replica_device(artifact: Path, backend: str, device: str | None) -> str:
    from ..runtime.selection import artifact_kind, choose_backend, default_device

    name = choose_backend(artifact_kind(artifact)) if backend == "auto" else backend
    return device or default_device(name)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _serve_until_interrupted(url: str, stop: Callable[[], None] | None = None) -> None:
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as cleanly as Ctrl-C
    click.echo(f"the page: {url}/")
    click.echo(f"the API: {url}/docs (features, match, images, similarity, matches)")
    click.echo("Ctrl-C or SIGTERM (`kill PID`) stops it cleanly")
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        click.echo("stopping", err=True)
    finally:
        if stop is not None:
            stop()


@click.command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True)
@click.option("--device", default=None, help="cpu or cuda (default: the backend's best here).")
@click.option(
    "--ray",
    "use_ray",
    is_flag=True,
    help="Run on Ray Serve (implied by --replicas or --address) instead of the local server.",
)
@click.option("--replicas", type=click.IntRange(1), default=None, help="Ray Serve replicas.")
@click.option(
    "--max-batch", type=click.IntRange(1), default=8, show_default=True, help="Images per run."
)
@click.option(
    "--batch-wait-ms",
    type=click.FloatRange(0),
    default=10.0,
    show_default=True,
    help="How long a batch waits to fill while more requests are arriving.",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--address", default=None, help="Ray cluster address (implies --ray).")
@click.option("--gpus-per-replica", type=float, default=None, help="Default: 1 on CUDA, else 0.")
@click.option("--threads", type=click.IntRange(1), default=None, help="CPU threads per model.")
@click.option("--max-request-mb", type=click.IntRange(1), default=32, show_default=True)
@click.option(
    "--cache-mb",
    type=click.IntRange(1),
    default=512,
    show_default=True,
    help="Uploaded images and their features kept (least recently used go first).",
)
@click.option("--ready-timeout", type=click.FloatRange(1), default=600.0, show_default=True)
@precision_options
@click.option(
    "--calibrate-on-requests",
    type=click.IntRange(0),
    default=0,
    metavar="N",
    help="With --precision bf16: measure the gate on the first N request images instead of "
    "--calibration-images (the exact engine answers until then; /stats shows progress).",
)
def serve(
    artifacts: tuple[Path, ...],
    backend: str,
    device: str | None,
    use_ray: bool,
    replicas: int | None,
    max_batch: int,
    batch_wait_ms: float,
    host: str,
    port: int,
    address: str | None,
    gpus_per_replica: float | None,
    threads: int | None,
    max_request_mb: int,
    cache_mb: int,
    ready_timeout: float,
    precision: str,
    calibration_images: Path | None,
    min_agreement: float,
    calibrate_on_requests: int,
) -> None:
    """HTTP feature server and the correspondence page for one or more models, with dynamic
    batching, in the foreground until Ctrl-C or SIGTERM (`kill PID`: both stop it cleanly): a
    local server (uvicorn) by default, Ray Serve with --ray."""
    from ..serve.app import FeatureService, ServeConfig
    from ..serve.hub import AppConfig
    from ..serve.inputs import Limits

    limits = Limits(max_request_bytes=max_request_mb * MEGABYTE)
    devices = [_replica_device(a, backend, device) for a in artifacts]
    wanted = precision_request(precision, calibration_images, min_agreement, calibrate_on_requests)
    models = tuple(
        ServeConfig(str(a.resolve()), backend, d, threads, max_batch, batch_wait_ms, limits, wanted)
        for a, d in zip(artifacts, devices, strict=True)
    )
    for model in models:
        FeatureService(model)  # refuse a bad artifact here, in one line, before anything starts
    config = AppConfig(models, cache_bytes=cache_mb * MEGABYTE, limits=limits)
    if host not in ("127.0.0.1", "localhost", "::1"):
        click.echo(
            f"note: listening on {host}: anyone who can reach it can use the server", err=True
        )
    if use_ray or replicas is not None or address is not None:
        gpus = gpus_per_replica if gpus_per_replica is not None else float("cuda" in devices)
        _serve_on_ray(config, replicas or 1, gpus, host, port, address, ready_timeout)
        return
    from ..serve.local import LocalServer

    server = LocalServer(share_threads(config, len(config.models)), host, port).start()
    server.wait_ready(ready_timeout)
    _serve_until_interrupted(server.url, server.stop)


def share_threads(config: AppConfig, workers: int) -> AppConfig:
    """Each model's thread count when the user gave none: the physical cores shared out among
    the `workers` models (replicas x models) that run at once here, so none oversubscribes."""
    from ..runtime.threads import threads_per_worker

    if any(m.threads is not None for m in config.models):
        return config
    per_worker = threads_per_worker(workers)
    return replace(config, models=tuple(replace(m, threads=per_worker) for m in config.models))


def _serve_on_ray(
    config: AppConfig,
    replicas: int,
    gpus: float,
    host: str,
    port: int,
    address: str | None,
    ready_timeout: float,
) -> None:
    from ..serve.ray_serve import ReplicaResources, deploy, wait_ready
    from ..serve.ray_session import ray_session

    with ray_session(address, replicas) as local:
        if local:
            config = share_threads(config, replicas * len(config.models))
        handle = deploy(config, ReplicaResources(replicas, 1.0, gpus), host, port)
        try:
            wait_ready(handle, ready_timeout)
            _serve_until_interrupted(f"http://{host}:{port}")
        finally:
            from ray import serve as ray_serve

            ray_serve.shutdown()


COMMANDS: list[click.Command] = [serve]
