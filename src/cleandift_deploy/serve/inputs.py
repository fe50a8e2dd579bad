"""Checking what an HTTP client sends: body size, content type, image bytes, taps, sizes, points.

Every check fails with a `ClientError` carrying an HTTP status (4xx) and a one-line message saying
what was wrong and what to send instead, so a client fault never becomes a 500 and never reaches
the model. Images are decoded under the same rules as `extract`: Pillow's decompression-bomb limit
stays on and every mode is brought to 8-bit RGB (`runtime.images.pil_to_rgb`).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import CleanDiftError
from ..manifest import Manifest
from ..runtime.images import pil_to_rgb
from ..runtime.request_checks import resolve_image_size, select_taps
from ..values import parse_size as parse_image_size
from ..values import split_list

IMAGE_TYPES = ("image/", "application/octet-stream")
"""Content types `/features` accepts: any `image/*`, or raw bytes."""


class ClientError(Exception):
    """A request the server refuses: the HTTP status and a one-line message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    """What one request may carry. `max_pixels` defaults to Pillow's decompression-bomb limit,
    the one `extract` applies to files."""

    max_request_bytes: int = 32 << 20
    max_pixels: int = Image.MAX_IMAGE_PIXELS or 89_478_485
    max_points: int = 4096


async def read_body(chunks: AsyncIterator[bytes], declared: str | None, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to exceed `limit` bytes."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ClientError(413, f"request body of {declared} bytes exceeds the {limit}-byte limit")
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise ClientError(413, f"request body exceeds the {limit}-byte limit")
        parts.append(chunk)
    return b"".join(parts)


def check_image_type(content_type: str | None) -> None:
    """`/features` takes image bytes: `image/*` or `application/octet-stream` (415 otherwise)."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if not kind.startswith(IMAGE_TYPES):
        raise ClientError(
            415,
            f"content type {kind or 'missing'!r} is not an image: send the image file's bytes "
            "with Content-Type image/jpeg, image/png or application/octet-stream",
        )


def decode_image(data: bytes, limits: Limits, name: str = "image") -> np.ndarray:
    """Image bytes -> uint8 [H, W, 3]; 400 for undecodable data, 413 for too many pixels."""
    if not data:
        raise ClientError(400, f"{name} is empty: send the image file's bytes")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > limits.max_pixels:
                raise ClientError(
                    413,
                    f"{name} has {width}x{height} pixels, above the {limits.max_pixels}-pixel "
                    "limit: downscale it first",
                )
            image.load()
            return pil_to_rgb(image)
    except Image.DecompressionBombError as err:
        raise ClientError(413, f"{name} refused as a possible decompression bomb ({err})") from None
    except UnidentifiedImageError:
        raise ClientError(400, f"{name} is not an image Pillow can read") from None
    except CleanDiftError as err:
        raise ClientError(400, f"{name}: {err}") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise ClientError(400, f"{name} is corrupt or truncated ({err})") from None


def parse_taps(value: str | None, manifest: Manifest) -> tuple[str, ...] | None:
    """`?taps=us3,us6` -> the taps (None: all the server extracts); unknown taps are a 400."""
    if value is None:
        return None
    wanted = split_list(value)
    try:
        return select_taps(manifest, wanted or None)
    except CleanDiftError as err:
        raise ClientError(400, str(err)) from None


def parse_size(value: str | None, manifest: Manifest) -> tuple[int, int] | None:
    """`?size=HxW` -> the model input size (None: the server's); outside the profile is a 422."""
    if value is None:
        return None
    try:
        size = parse_image_size(value)
    except CleanDiftError:
        raise ClientError(400, f"size {value!r} is not HxW, e.g. size=512x768") from None
    try:
        return resolve_image_size(manifest, size)
    except CleanDiftError as err:
        raise ClientError(422, str(err)) from None


def check_query(query: dict[str, str], allowed: tuple[str, ...]) -> None:
    """Unknown query parameters are refused rather than silently ignored."""
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise ClientError(
            400, f"unknown parameter {', '.join(unknown)}: use {', '.join(allowed) or 'none'}"
        )


@dataclass(frozen=True)
class MatchRequest:
    """A decoded `/match` body: both images, the source points (x, y) and how to match."""

    source: np.ndarray
    target: np.ndarray
    points: list[tuple[float, float]]
    tap: str | None
    mode: str


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise ClientError(400, f"the body is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ClientError(400, "the body must be a JSON object with source, target and points")
    return data


def _b64_image(data: dict[str, Any], key: str, limits: Limits) -> np.ndarray:
    value = data.get(key)
    if not isinstance(value, str):
        raise ClientError(400, f"{key!r} is missing: give the image file's bytes in base64")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ClientError(400, f"{key!r} is not valid base64") from None
    return decode_image(raw, limits, key)


def _points(value: Any, limits: Limits) -> list[tuple[float, float]]:
    if not isinstance(value, list) or not value:
        raise ClientError(400, "'points' must be a non-empty list of [x, y] source pixels")
    if len(value) > limits.max_points:
        raise ClientError(413, f"{len(value)} points, above the limit of {limits.max_points}")
    points = []
    for point in value:
        if (
            not isinstance(point, list)
            or len(point) != 2
            or not all(isinstance(c, int | float) and not isinstance(c, bool) for c in point)
        ):
            raise ClientError(400, f"point {point!r} is not [x, y] with two numbers")
        points.append((float(point[0]), float(point[1])))
    return points


def parse_match(body: bytes, content_type: str | None, limits: Limits) -> MatchRequest:
    """The `/match` JSON: {"source": b64, "target": b64, "points": [[x, y], ...],
    "tap": optional, "mode": "nn" | "window-softargmax"}."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise ClientError(415, f"content type {kind or 'missing'!r}: send application/json")
    data = _json_object(body)
    unknown = sorted(set(data) - {"source", "target", "points", "tap", "mode"})
    if unknown:
        raise ClientError(400, f"unknown field {', '.join(unknown)}")
    tap, mode = data.get("tap"), data.get("mode", "nn")
    if tap is not None and not isinstance(tap, str):
        raise ClientError(400, "'tap' must be a tap name such as \"us6\"")
    if mode not in ("nn", "window-softargmax"):
        raise ClientError(400, f"mode {mode!r}: use nn or window-softargmax")
    return MatchRequest(
        source=_b64_image(data, "source", limits),
        target=_b64_image(data, "target", limits),
        points=_points(data.get("points"), limits),
        tap=tap,
        mode=mode,
    )
