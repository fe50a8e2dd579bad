"""The Ray Serve deployment: the same ASGI app as the local server, one hub per replica.

Each replica builds a `ServeHub` (its own models, batchers and cache; on a GPU it asks Ray for
`num_gpus`), loads and warms the models in background threads so `/readyz` answers meanwhile, and
serves `asgi.build_app(hub)` through Serve's ingress: the routes, the asyncio batching and the
4xx answers are those of `serve` without `--ray`. Ray adds replicas and a cluster.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import LoggingConfig

from ..errors import CleanDiftError
from .asgi import build_app
from .hub import AppConfig, ServeHub

APP_NAME = "cleandift"
READY_POLL_S = 0.25
QUIET_LOGS = LoggingConfig(log_level="WARNING", enable_access_log=False)


@serve.deployment
@serve.ingress()
class FeatureDeployment:
    """One replica: the app over its own hub."""

    def __init__(self, config: AppConfig) -> None:
        self.hub = ServeHub(config)
        self.hub.start()

    def __serve_build_asgi_app__(self) -> FastAPI:
        """The replica's app, built after the constructor (Serve's late-bound ingress)."""
        return build_app(self.hub)

    def readiness(self) -> tuple[bool, str | None]:
        """(ready, load error) of this replica, for the CLI's start-up wait."""
        return self.hub.ready, self.hub.load_error


@dataclass(frozen=True)
class ReplicaResources:
    """Where the replicas run and what each one asks Ray for."""

    replicas: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0


def deploy(
    config: AppConfig, resources: ReplicaResources, host: str, port: int
) -> DeploymentHandle:
    """Start Serve's HTTP proxy on host:port and deploy the app at `/` (Ray must be running)."""
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    serve.start(http_options={"host": host, "port": port}, logging_config=QUIET_LOGS)
    deployment = FeatureDeployment.options(  # type: ignore[attr-defined]  # @serve.deployment
        num_replicas=resources.replicas,
        max_ongoing_requests=max(32, 4 * max(m.max_batch for m in config.models)),
        ray_actor_options={"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus},
    )
    return serve.run(
        deployment.bind(config), name=APP_NAME, route_prefix="/", logging_config=QUIET_LOGS
    )


def wait_ready(handle: DeploymentHandle, timeout_s: float) -> None:
    """Block until a replica says its model is loaded and warmed up; its load error otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready, error = handle.readiness.remote().result()
        if error:
            raise CleanDiftError(f"the model failed to load in the server: {error}")
        if ready:
            return
        time.sleep(READY_POLL_S)
    raise CleanDiftError(
        f"the model was not ready after {timeout_s:.0f} s: raise --ready-timeout for large models"
    )
