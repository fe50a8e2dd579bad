"""Everything one server process holds: its models, their batchers, and the image/feature cache.

`ServeHub` is shared by the local server and each Ray Serve replica (the ASGI app in `asgi.py` is
built on it). It owns one `FeatureService` per served model (loaded in background threads, so
`/readyz` answers meanwhile) and one `Batcher` per model. The page's routes work on images
uploaded once and named by their content hash: the decoded pixels, each model's features of them
and the prepared matching targets live in one `ByteLRU`; an unknown or evicted id is a 404 and the
page uploads the image again.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import CleanDiftError
from ..runtime.request_checks import select_taps
from .app import FeatureService, Item, ItemResult, ServeConfig
from .batcher import Batcher
from .cache import ByteLRU, content_id, is_content_id
from .inputs import ClientError, Limits, check_image_type, decode_image
from .matching import Side, best_match, heatmap, prepared_target, query_vector, top_matches

DEFAULT_CACHE_BYTES = 512 << 20
MAX_HEATMAP_PIXELS = 2048 * 2048
HEATMAP_COLOURS = "turbo"


@dataclass(frozen=True)
class AppConfig:
    """The served models (in the order the page lists them) and what the process may hold."""

    models: tuple[ServeConfig, ...]
    cache_bytes: int = DEFAULT_CACHE_BYTES
    limits: Limits = field(default_factory=Limits)


def model_names(artifacts: list[str]) -> list[str]:
    """Short unique names for the served artifacts: file stems, numbered when they repeat."""
    names: list[str] = []
    for artifact in artifacts:
        stem = Path(artifact).stem.removesuffix(".engine") or "model"
        name, n = stem, 2
        while name in names:
            name, n = f"{stem}-{n}", n + 1
        names.append(name)
    return names


def describe(name: str, service: FeatureService) -> dict[str, Any]:
    """What the page shows about one model: its taps, sizes and what it computes."""
    manifest = service.manifest
    noise = manifest.noise or {}
    return {
        "name": name,
        "kind": manifest.kind,
        "arch": manifest.arch,
        "source": manifest.source,
        "method": manifest.build.get("method") or ("noisy features" if noise else "clean features"),
        "taps": list(manifest.tap_names),
        "default_tap": manifest.tap_names[-1],
        "image_size": [manifest.height.opt, manifest.width.opt],
        "ready": service.ready,
        "selection": None if service.extractor is None else service.extractor.selection.as_dict(),
    }


@functools.cache
def colour_table() -> np.ndarray:
    """[256, 3] uint8 RGB of the heatmap's colour map (matplotlib's, looked up once)."""
    from matplotlib import colormaps

    ramp = colormaps[HEATMAP_COLOURS](np.linspace(0.0, 1.0, 256))[:, :3]
    return np.asarray((ramp * 255).round(), dtype=np.uint8)


def colour_png(values: torch.Tensor) -> tuple[bytes, float, float]:
    """[H, W] scores -> a palette PNG through the colour map, min-max scaled as DIFT draws it."""
    array = values.numpy()
    low, high = float(array.min()), float(array.max())
    levels = (array - low) * (255.0 / max(high - low, 1e-12))
    image = Image.fromarray(np.clip(levels + 0.5, 0, 255).astype(np.uint8), "L").convert("P")
    image.putpalette(colour_table().tobytes())
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue(), low, high


class ServeHub:
    """The models, batchers and cache of one server process."""

    def __init__(self, config: AppConfig) -> None:
        self.config = config
        names = model_names([m.artifact for m in config.models])
        self.services = {n: FeatureService(m) for n, m in zip(names, config.models, strict=True)}
        self.batchers = {
            name: Batcher(service.run_batch, service.config.max_batch, service.config.batch_wait_ms)
            for name, service in self.services.items()
        }
        self.cache = ByteLRU(config.cache_bytes)
        self._pending: dict[Hashable, asyncio.Future[ItemResult]] = {}

    def start(self) -> list[threading.Thread]:
        """Load and warm up every model in background threads."""
        threads = [
            threading.Thread(target=s.load, name=f"load-{n}", daemon=True)
            for n, s in self.services.items()
        ]
        threads.append(threading.Thread(target=colour_table, name="colours", daemon=True))
        for thread in threads:
            thread.start()
        return threads

    @property
    def ready(self) -> bool:
        """Whether every model is loaded."""
        return all(s.ready for s in self.services.values())

    @property
    def load_error(self) -> str | None:
        """The first model's load error, if any failed."""
        errors = [f"{n}: {s.load_error}" for n, s in self.services.items() if s.load_error]
        return "; ".join(errors) or None

    def name(self, model: str | None) -> str:
        """The served model called `model` (default: the first); unknown names are a 404."""
        if model is None:
            return next(iter(self.services))
        if model not in self.services:
            raise ClientError(404, f"no model {model!r}: use {', '.join(self.services)}")
        return model

    def stats(self) -> dict[str, Any]:
        """Requests and batch sizes over all models and per model (with the engine answering and
        a deferred bf16 gate's progress), and the cache's figures."""
        per_model = {n: s.stats.snapshot() | s.engine_state() for n, s in self.services.items()}
        sizes: dict[str, int] = {}
        for snap in per_model.values():
            for size, count in snap["batch_sizes"].items():  # type: ignore[attr-defined]
                sizes[size] = sizes.get(size, 0) + count
        return {
            "requests": sum(int(s["requests"]) for s in per_model.values()),  # type: ignore[call-overload]
            "batch_sizes": dict(sorted(sizes.items(), key=lambda kv: int(kv[0]))),
            "max_batch_seen": max((int(k) for k in sizes), default=0),
            "models": per_model,
            "cache": self.cache.snapshot(),
        }

    # ---- the page's routes -----------------------------------------------------------------

    def add_image(self, data: bytes, content_type: str | None) -> dict[str, Any]:
        """Decode and keep an uploaded image under its content hash: {id, width, height}."""
        check_image_type(content_type)
        image_id = content_id(data)
        rgb = self.cache.get(("image", image_id))
        if rgb is None:
            rgb = decode_image(data, self.config.limits)
            self.cache.put(("image", image_id), rgb)
        return {"id": image_id, "width": int(rgb.shape[1]), "height": int(rgb.shape[0])}

    def image_info(self, image_id: str) -> dict[str, Any]:
        """{id, width, height} of a kept image; 404 when unknown or evicted."""
        rgb = self._image(image_id)
        return {"id": image_id, "width": int(rgb.shape[1]), "height": int(rgb.shape[0])}

    def _image(self, image_id: str) -> np.ndarray:
        if not is_content_id(image_id):
            raise ClientError(400, f"{image_id!r} is not an image id: POST the image to /images")
        rgb = self.cache.get(("image", image_id))
        if rgb is None:
            raise ClientError(404, f"unknown image {image_id}: POST the image to /images again")
        return rgb

    async def features(self, name: str, image_id: str) -> ItemResult:
        """One model's features of a kept image: cached, or computed once through the batcher
        (concurrent requests for the same image share one computation)."""
        key = ("features", name, image_id)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        rgb = self._image(image_id)
        self.services[name].stats.record_request()
        task = asyncio.ensure_future(self.batchers[name](Item(rgb, None)))
        self._pending[key] = task
        try:
            result = await task
        finally:
            self._pending.pop(key, None)
        self.cache.put(key, result)
        return result

    def _check_ready(self, name: str) -> None:
        service = self.services[name]
        if not service.ready:
            detail = f" (loading failed: {service.load_error})" if service.load_error else ""
            raise ClientError(503, f"model {name} is not ready yet{detail}: poll /readyz")

    def _tap(self, name: str, tap: str | None) -> str:
        manifest = self.services[name].manifest
        if tap is None:
            return manifest.tap_names[-1]
        try:
            select_taps(manifest, [tap])
        except CleanDiftError as err:
            raise ClientError(400, str(err)) from None
        return tap

    async def _pair(
        self, model: str | None, source: str, target: str, tap: str | None
    ) -> tuple[str, str, Side, Side]:
        name = self.name(model)
        self._check_ready(name)
        tap = self._tap(name, tap)
        self._image(source), self._image(target)
        src, tgt = await asyncio.gather(self.features(name, source), self.features(name, target))
        return (
            name,
            tap,
            (src.taps[tap], src.placement, src.input_size),
            (tgt.taps[tap], tgt.placement, tgt.input_size),
        )

    async def similarity(self, request: dict[str, Any]) -> dict[str, Any]:
        """The heatmap of one source point over the target, its best match and score."""
        started = time.perf_counter()
        name, tap, src, tgt = await self._pair(
            request.get("model"), request["source"], request["target"], request.get("tap")
        )
        size = request.get("size") or tgt[1].original
        if size[0] < 1 or size[1] < 1 or size[0] * size[1] > MAX_HEATMAP_PIXELS:
            raise ClientError(
                400,
                f"heatmap size {size[0]}x{size[1]} must be positive and at most "
                f"{MAX_HEATMAP_PIXELS} pixels",
            )
        computed = time.perf_counter()
        key = ("field", name, request["target"], tap)

        def compute() -> dict[str, Any]:
            field = self.cache.get(key)
            if field is None:
                field = prepared_target(tgt)
                self.cache.put(key, field)
            try:
                query = query_vector(src, tuple(request["point"]))
            except ValueError as err:
                raise ClientError(400, str(err)) from None
            (x, y), score = best_match(query, field, tgt)
            values = heatmap(query, field, tgt, (int(size[0]), int(size[1])))
            return {"match": [x, y], "score": score, "heatmap": _encode(values, request)}

        answer = await asyncio.to_thread(compute)
        done = time.perf_counter()
        self.services[name].stats.record_request()
        return {
            "model": name,
            "tap": tap,
            "point": list(request["point"]),
            **answer,
            "timing_ms": {
                "features": round(1000 * (computed - started), 3),
                "matching": round(1000 * (done - computed), 3),
                "total": round(1000 * (done - started), 3),
            },
        }

    async def matches(self, request: dict[str, Any]) -> dict[str, Any]:
        """The best (mutual) nearest-neighbour cell pairs between two kept images."""
        started = time.perf_counter()
        name, tap, src, tgt = await self._pair(
            request.get("model"), request["source"], request["target"], request.get("tap")
        )
        found = await asyncio.to_thread(
            top_matches, src, tgt, int(request["n"]), bool(request["mutual"]),
            float(request["min_score"]),
        )  # fmt: skip
        self.services[name].stats.record_request()
        return {
            "model": name,
            "tap": tap,
            "mutual": bool(request["mutual"]),
            "source": found.source.tolist(),
            "target": found.target.tolist(),
            "scores": found.scores.tolist(),
            "timing_ms": {"total": round(1000 * (time.perf_counter() - started), 3)},
        }


def _encode(values: torch.Tensor, request: dict[str, Any]) -> dict[str, Any]:
    """The heatmap as a colour-mapped PNG or raw little-endian float16, base64 in JSON."""
    height, width = values.shape
    if request.get("format", "png") == "float16":
        raw = values.numpy().astype("<f2").tobytes()
        low, high = float(values.min()), float(values.max())
        kind = "float16"
    else:
        raw, low, high = colour_png(values)
        kind = "png"
    return {
        "format": kind,
        "width": width,
        "height": height,
        "min": low,
        "max": high,
        "colour_map": HEATMAP_COLOURS if kind == "png" else None,
        "data": base64.b64encode(raw).decode(),
    }
