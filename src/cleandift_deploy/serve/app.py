"""The HTTP API of the feature server, independent of the framework that carries it.

`FeatureService` owns one `FeatureExtractor` (loaded and warmed up in the background, so `/readyz`
can say when it is ready), answers requests given as `HttpRequest`, and runs the model on batches
of decoded images (`run_batch`). How single images become batches is the caller's business: the
Ray Serve deployment passes its `@serve.batch` method as `extract`, a test can pass a direct call.

Routes: `POST /features` (image bytes -> safetensors with the taps and the manifest hash in its
metadata; `?taps=us3,us6`, `?size=HxW`), `POST /match` (JSON: two base64 images and source points
-> matched points and scores), `POST /predict` (a graph with a probe inside, `export --head`:
image bytes -> the depth map as a 16-bit PNG of millimetres, or the classes as a palette PNG, at the
image's size), `GET /healthz`, `GET /readyz`, `GET /manifest`, `GET /stats`
(request count, observed batch sizes, the engine answering and a deferred bf16 gate's progress).
Client faults are 4xx with a one-line JSON message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import CleanDiftError
from ..manifest import artifact_manifest
from ..runtime.extract_files import feature_file_bytes, feature_metadata
from ..runtime.extractor import FeatureExtractor
from ..runtime.precision import EXACT, PrecisionRequest
from ..runtime.prediction_maps import prediction_png_bytes
from ..runtime.preprocess import Placement
from ..runtime.request_checks import manifest_sha256, select_taps
from ..runtime.selection import artifact_kind
from .inputs import (
    ClientError,
    Limits,
    check_image_type,
    check_query,
    decode_image,
    parse_match,
    parse_size,
    parse_taps,
)
from .matching import match_in_pixels
from .request_calibration import RequestCalibration

log = logging.getLogger(__name__)
WARMUP_SEED = 0


@dataclass(frozen=True)
class ServeConfig:
    """How each replica opens its model and what it accepts."""

    artifact: str
    backend: str = "auto"
    device: str | None = None
    threads: int | None = None
    max_batch: int = 8
    batch_wait_ms: float = 10.0
    limits: Limits = field(default_factory=Limits)
    precision: PrecisionRequest = EXACT


@dataclass(frozen=True)
class Item:
    """One decoded image waiting for the model, and the input size asked for (None: default)."""

    rgb: np.ndarray
    size: tuple[int, int] | None


@dataclass
class ItemResult:
    """One image's features `{tap: [C, h, w]}`, its placement, and the batch it ran in."""

    taps: dict[str, torch.Tensor]
    placement: Placement
    input_size: tuple[int, int]
    metadata: dict[str, str]
    batch_size: int


@dataclass(frozen=True)
class HttpRequest:
    """The parts of an HTTP request the API looks at (the body already read under the limit)."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str | None
    body: bytes = b""


@dataclass(frozen=True)
class Reply:
    """An HTTP answer."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_reply(status: int, value: object, headers: dict[str, str] | None = None) -> Reply:
    """A JSON answer on one line."""
    return Reply(status, json.dumps(value).encode(), "application/json", headers or {})


def error_reply(status: int, message: str) -> Reply:
    """`{"error": "..."}` with the message kept to one line."""
    return json_reply(status, {"error": " ".join(message.split())})


class BatchStats:
    """Requests served and how many images each model run held (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.batches: Counter[int] = Counter()

    def record_batch(self, size: int) -> None:
        """Count one model run over `size` images."""
        with self._lock:
            self.batches[size] += 1

    def record_request(self) -> None:
        """Count one answered request."""
        with self._lock:
            self.requests += 1

    def snapshot(self) -> dict[str, object]:
        """JSON-ready figures: requests, batches by size, largest batch seen."""
        with self._lock:
            return {
                "requests": self.requests,
                "batch_sizes": {str(k): v for k, v in sorted(self.batches.items())},
                "max_batch_seen": max(self.batches, default=0),
            }


Extract = Callable[[Item], Awaitable[ItemResult]]
"""How one image reaches the model: the `@serve.batch` method, or a direct call in tests."""

ROUTES = {
    "/features": "POST",
    "/match": "POST",
    "/predict": "POST",
    "/healthz": "GET",
    "/readyz": "GET",
    "/manifest": "GET",
    "/stats": "GET",
}


class FeatureService:
    """One replica's model and request handling; `load()` opens and warms up the model."""

    def __init__(self, config: ServeConfig) -> None:
        path = Path(config.artifact)
        artifact_kind(path)
        self.config = config
        self.manifest = artifact_manifest(path)
        self.manifest_sha256 = manifest_sha256(self.manifest)
        self.stats = BatchStats()
        self.extractor: FeatureExtractor | None = None
        self.load_error: str | None = None
        self._sizes: dict[tuple[int, int], FeatureExtractor] = {}
        self._lock = threading.Lock()
        wanted = config.precision
        self.calibration = (
            RequestCalibration(wanted.calibrate_on_requests) if wanted.deferred else None
        )

    @property
    def ready(self) -> bool:
        """Whether the model is loaded and warmed up."""
        return self.extractor is not None

    def load(self) -> None:
        """Open the artifact and run it once on random images at the default size (one image and
        a full batch), so the first request does not pay for session set-up and memory growth."""
        try:
            extractor = FeatureExtractor.load(
                self.config.artifact,
                self.config.backend,
                self.config.device,
                batch_size=self.config.max_batch,
                threads=self.config.threads,
                **self.config.precision.load_options(),
            )
            self._warm_up(extractor)
            self.extractor = extractor
        except Exception as err:  # reported through /readyz instead of killing the replica
            self.load_error = f"{type(err).__name__}: {err}"
            log.error("model failed to load: %s", self.load_error)

    def _warm_up(self, extractor: FeatureExtractor) -> None:
        rng = np.random.default_rng(WARMUP_SEED)
        height, width = extractor.image_size
        for count in sorted({1, min(self.config.max_batch, extractor.batch_size)}):
            extractor.extract([rng.integers(0, 256, (height, width, 3), dtype=np.uint8)] * count)

    def _calibrate_on(self, items: list[Item]) -> None:
        """Give request images to a deferred bf16 gate; the one call that completes the set
        starts the measurement in the background (the exact engine keeps answering)."""
        if self.calibration is None:
            return
        images = self.calibration.add([item.rgb for item in items])
        if images is not None:
            # daemon: stopping the server does not wait for a measurement (its record is
            # written atomically, so an interrupted one leaves nothing behind)
            gate = threading.Thread(
                target=self._gate, args=(images,), name="bf16-gate", daemon=True
            )
            gate.start()

    def _gate(self, images: list[np.ndarray]) -> None:
        """Measure the bf16 gate on request images and move to bf16 where it passes."""
        assert self.calibration is not None and self.extractor is not None
        try:
            gated = self.extractor.behind_bf16_gate(images, self.config.precision.min_agreement)
            if gated is not self.extractor:
                self._warm_up(gated)
            with self._lock:
                self.extractor = gated
                self._sizes.clear()
            self.calibration.finish(f"{gated.selection.backend}: {gated.selection.reason}")
        except Exception as err:  # the exact engine keeps serving; /stats says why
            self.calibration.finish(f"{type(err).__name__}: {err}", failed=True)
            log.error("bf16 gate on request images failed: %s", err)

    def _extractor_for(self, size: tuple[int, int] | None) -> FeatureExtractor:
        base = self.extractor
        if base is None:
            raise CleanDiftError("the model is not loaded")
        if size is None or size == base.image_size:
            return base
        with self._lock:
            if size not in self._sizes:
                self._sizes[size] = FeatureExtractor(
                    base.backend,
                    base.manifest,
                    taps=base.taps,
                    image_size=size,
                    resize=base.resize,
                    batch_size=base.batch_size,
                )
            return self._sizes[size]

    def run_batch(self, items: list[Item]) -> list[ItemResult]:
        """Run the model over `items`: one run per requested input size (images of any original
        size are resized onto that canvas, so all items of one size share a run)."""
        results: list[ItemResult | None] = [None] * len(items)
        groups: dict[tuple[int, int] | None, list[int]] = {}
        for index, item in enumerate(items):
            groups.setdefault(item.size, []).append(index)
        for size, indices in groups.items():
            extractor = self._extractor_for(size)
            features = extractor.extract([items[i].rgb for i in indices])
            self.stats.record_batch(len(indices))
            for row, index in enumerate(indices):
                placement = features.placements[row]
                metadata = feature_metadata(extractor, placement, Path(""))
                del metadata["image"]
                results[index] = ItemResult(
                    {name: t[row] for name, t in features.taps.items()},
                    placement,
                    extractor.image_size,
                    metadata,
                    len(indices),
                )
        self._calibrate_on(items)
        return [r for r in results if r is not None]

    async def handle(self, request: HttpRequest, extract: Extract) -> Reply:
        """Answer one request; client faults are 4xx, anything unexpected a one-line 500."""
        try:
            reply = await self._route(request, extract)
        except ClientError as err:
            reply = error_reply(err.status, err.message)
        except Exception as err:
            log.exception("request to %s failed", request.path)
            reply = error_reply(500, f"internal error: {type(err).__name__}: {err}")
        self.stats.record_request()
        return reply

    async def _route(self, request: HttpRequest, extract: Extract) -> Reply:
        method = ROUTES.get(request.path)
        if method is None:
            raise ClientError(404, f"no route {request.path}: use {', '.join(ROUTES)}")
        if request.method != method:
            raise ClientError(405, f"{request.path} takes {method}, not {request.method}")
        if request.path == "/healthz":
            return json_reply(200, {"status": "ok"})
        if request.path == "/readyz":
            status = 200 if self.ready else 503
            return json_reply(status, {"ready": self.ready, "error": self.load_error})
        if request.path == "/manifest":
            headers = {"X-Manifest-Sha256": self.manifest_sha256}
            return Reply(200, self.manifest.to_json().encode(), "application/json", headers)
        if request.path == "/stats":
            return json_reply(200, self.stats.snapshot() | self.engine_state())
        self._check_ready()
        if request.path == "/features":
            return await self._features(request, extract)
        if request.path == "/predict":
            return await self._predict(request, extract)
        return await self._match(request, extract)

    def engine_state(self) -> dict[str, object]:
        """Which engine answers and why, and a deferred bf16 gate's progress."""
        extractor = self.extractor
        return {
            "engine": None if extractor is None else extractor.selection.as_dict(),
            "calibration": None if self.calibration is None else self.calibration.snapshot(),
        }

    def _check_ready(self) -> None:
        if not self.ready:
            detail = f" (loading failed: {self.load_error})" if self.load_error else ""
            raise ClientError(503, f"the model is not ready yet{detail}: poll /readyz")

    async def _features(self, request: HttpRequest, extract: Extract) -> Reply:
        check_query(request.query, ("taps", "size"))
        check_image_type(request.content_type)
        taps = parse_taps(request.query.get("taps"), self.manifest)
        size = parse_size(request.query.get("size"), self.manifest)
        rgb = decode_image(request.body, self.config.limits)
        result = await extract(Item(rgb, size))
        chosen = taps or tuple(result.taps)
        tensors = {name: result.taps[name].contiguous() for name in chosen}
        metadata = {**result.metadata, "taps": json.dumps(list(chosen))}
        headers = {
            "X-Batch-Size": str(result.batch_size),
            "X-Manifest-Sha256": self.manifest_sha256,
        }
        body = feature_file_bytes(tensors, metadata)
        return Reply(200, body, "application/octet-stream", headers)

    async def _predict(self, request: HttpRequest, extract: Extract) -> Reply:
        record = self.manifest.build.get("probe")
        if not record:
            raise ClientError(404, "this model has no probe inside: export one with --head")
        check_query(request.query, ("size",))
        check_image_type(request.content_type)
        size = parse_size(request.query.get("size"), self.manifest)
        result = await extract(Item(decode_image(request.body, self.config.limits), size))
        output = self.manifest.tap_names[0]
        task = str(record["info"]["task"])
        body = await asyncio.to_thread(
            prediction_png_bytes, result.taps[output], result.placement, task
        )
        headers = {
            "X-Task": task,
            "X-Unit": "millimetres" if task == "depth" else "class index",
            "X-Manifest-Sha256": self.manifest_sha256,
        }
        return Reply(200, body, "image/png", headers)

    async def _match(self, request: HttpRequest, extract: Extract) -> Reply:
        check_query(request.query, ("size",))
        size = parse_size(request.query.get("size"), self.manifest)
        match = parse_match(request.body, request.content_type, self.config.limits)
        tap = match.tap or self.manifest.tap_names[-1]
        try:
            select_taps(self.manifest, [tap])
        except CleanDiftError as err:
            raise ClientError(400, str(err)) from None
        source, target = await asyncio.gather(
            extract(Item(match.source, size)), extract(Item(match.target, size))
        )
        try:
            points, scores = await asyncio.to_thread(
                match_in_pixels,
                (source.taps[tap], source.placement, source.input_size),
                (target.taps[tap], target.placement, target.input_size),
                match.points,
                match.mode,
            )
        except ValueError as err:
            raise ClientError(400, str(err)) from None
        return json_reply(
            200,
            {
                "points": points.tolist(),
                "scores": scores.tolist(),
                "tap": tap,
                "mode": match.mode,
                "manifest_sha256": self.manifest_sha256,
            },
        )
