"""The Ray Serve deployment of `FeatureService`, with `@serve.batch` dynamic batching.

Each replica owns one `FeatureExtractor` (its own backend session; on a GPU it asks Ray for
`num_gpus`), loads and warms it up in a background thread so `/readyz` can answer meanwhile, and
collects single-image requests into batches of up to `max_batch` images, waiting at most
`batch_wait_ms` for a batch to fill. The model runs in a worker thread, so health checks and
new requests are answered while a batch computes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass

from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import LoggingConfig
from starlette.requests import Request
from starlette.responses import Response

from ..errors import CleanDiftError
from .app import FeatureService, HttpRequest, Item, ItemResult, ServeConfig, error_reply
from .inputs import ClientError, read_body

APP_NAME = "cleandift"
READY_POLL_S = 0.25
QUIET_LOGS = LoggingConfig(log_level="WARNING", enable_access_log=False)


@serve.deployment
class FeatureDeployment:
    """One replica: HTTP in, batched model runs, HTTP out."""

    def __init__(self, config: ServeConfig) -> None:
        self.service = FeatureService(config)
        self.extract_batch.set_max_batch_size(config.max_batch)
        self.extract_batch.set_batch_wait_timeout_s(config.batch_wait_ms / 1000.0)
        threading.Thread(target=self.service.load, name="model-load", daemon=True).start()

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def extract_batch(self, items: list[Item]) -> list[ItemResult]:
        """Run the model once over every image that arrived within the batch window."""
        return await asyncio.to_thread(self.service.run_batch, items)

    def readiness(self) -> tuple[bool, str | None]:
        """(ready, load error) of this replica, for the CLI's start-up wait."""
        return self.service.ready, self.service.load_error

    async def __call__(self, request: Request) -> Response:
        """Read the body under the size limit, then let the service answer."""
        limit = self.service.config.limits.max_request_bytes
        try:
            body = await read_body(request.stream(), request.headers.get("content-length"), limit)
        except ClientError as err:
            reply = error_reply(err.status, err.message)
        else:
            parsed = HttpRequest(
                request.method,
                request.url.path,
                dict(request.query_params),
                request.headers.get("content-type"),
                body,
            )
            reply = await self.service.handle(parsed, self.extract_batch)
        return Response(
            reply.body, reply.status, headers=reply.headers, media_type=reply.content_type
        )


@dataclass(frozen=True)
class ReplicaResources:
    """Where the replicas run and what each one asks Ray for."""

    replicas: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0


def deploy(
    config: ServeConfig, resources: ReplicaResources, host: str, port: int
) -> DeploymentHandle:
    """Start Serve's HTTP proxy on host:port and deploy the app at `/` (Ray must be running)."""
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    serve.start(http_options={"host": host, "port": port}, logging_config=QUIET_LOGS)
    deployment = FeatureDeployment.options(  # type: ignore[attr-defined]  # @serve.deployment
        num_replicas=resources.replicas,
        max_ongoing_requests=max(32, 4 * config.max_batch),
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
