"""The feature server: its HTTP API without a server, then one HTTP suite run against the local
server (uvicorn) and the Ray Serve deployment, which carry the same app.

One tiny artifact (dynamic batch 1..8, sizes 64..128) serves every test; Ray and Serve start once
for the module and are shut down at its end.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from export_helpers import run_cli
from PIL import Image
from runtime_helpers import agreement, export_tiny, random_rgb
from safetensors.torch import load as load_safetensors

from cleandift_deploy.kernels import match_dense, match_points
from cleandift_deploy.models.loading import LoadedUNet
from cleandift_deploy.runtime.extractor import FeatureExtractor
from cleandift_deploy.serve.app import FeatureService, HttpRequest, Item, ItemResult, ServeConfig
from cleandift_deploy.serve.cache import content_id
from cleandift_deploy.serve.hub import AppConfig
from cleandift_deploy.serve.inputs import ClientError, Limits, read_body
from cleandift_deploy.serve.local import LocalServer

LIMITS = Limits(max_request_bytes=200_000, max_pixels=300 * 300, max_points=16)


@pytest.fixture(scope="module")
def artifact(tiny: LoadedUNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serve") / "tiny.onnx"
    return export_tiny(
        tiny, out, batch=(1, 2, 8), image_size=(64, 64), size_range=((64, 64), (128, 128))
    )


@pytest.fixture(scope="module")
def direct(artifact: Path) -> FeatureExtractor:
    return FeatureExtractor.load(artifact, backend="onnxruntime", threads=1)


def _png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, "PNG")
    return buffer.getvalue()


def _photo(seed: int, height: int = 70, width: int = 90) -> tuple[np.ndarray, bytes]:
    rgb = random_rgb(height, width, np.random.default_rng(seed))
    return rgb, _png(rgb)


def _match_body(source: bytes, target: bytes, points: list[list[float]], **extra: object) -> bytes:
    fields = {
        "source": base64.b64encode(source).decode(),
        "target": base64.b64encode(target).decode(),
        "points": points,
        **extra,
    }
    return json.dumps(fields).encode()


# ---- the HTTP API without Ray ---------------------------------------------------------------


@pytest.fixture(scope="module")
def service(artifact: Path) -> FeatureService:
    service = FeatureService(ServeConfig(str(artifact), threads=1, max_batch=4, limits=LIMITS))
    service.load()
    assert service.ready, service.load_error
    return service


def _ask(service: FeatureService, request: HttpRequest) -> tuple[int, bytes, dict[str, str]]:
    async def one_at_a_time(item: Item) -> ItemResult:
        return service.run_batch([item])[0]

    reply = asyncio.run(service.handle(request, one_at_a_time))
    return reply.status, reply.body, reply.headers


def test_not_ready_until_loaded(artifact: Path) -> None:
    fresh = FeatureService(ServeConfig(str(artifact)))
    status, body, _ = _ask(fresh, HttpRequest("GET", "/readyz", {}, None))
    assert status == 503 and json.loads(body)["ready"] is False
    _, png = _photo(1)
    status, body, _ = _ask(fresh, HttpRequest("POST", "/features", {}, "image/png", png))
    assert status == 503 and "poll /readyz" in json.loads(body)["error"]
    assert _ask(fresh, HttpRequest("GET", "/healthz", {}, None))[0] == 200


def test_features_equal_a_direct_call(service: FeatureService, direct: FeatureExtractor) -> None:
    rgb, png = _photo(2)
    query = {"taps": "us6", "size": "128x64"}
    status, body, headers = _ask(service, HttpRequest("POST", "/features", query, "image/png", png))
    assert status == 200
    tensors = load_safetensors(body)
    assert list(tensors) == ["us6"]
    sized = FeatureExtractor(direct.backend, direct.manifest, image_size=(128, 64))
    want = sized([rgb])["us6"]
    assert tensors["us6"].shape == want.shape[1:] == (64, 8, 4)
    assert torch.equal(tensors["us6"], want[0])
    assert headers["X-Manifest-Sha256"] == direct.manifest_sha256


def test_batches_group_by_size(service: FeatureService, direct: FeatureExtractor) -> None:
    images = [_photo(seed)[0] for seed in (3, 4, 5)]
    items = [Item(images[0], None), Item(images[1], (128, 128)), Item(images[2], None)]
    results = service.run_batch(items)
    assert [r.batch_size for r in results] == [2, 1, 2]
    assert [r.input_size for r in results] == [(64, 64), (128, 128), (64, 64)]
    want = direct([images[0], images[2]])["us3"]
    got = torch.stack([results[0].taps["us3"], results[2].taps["us3"]])
    figures = agreement(want, got)
    assert figures["cosine_min"] >= 0.99999 and figures["max_abs"] < 1e-4


@pytest.mark.parametrize(
    ("path", "query", "content_type", "body", "status", "words"),
    [
        ("/features", {}, "text/plain", b"hello", 415, "not an image"),
        ("/features", {}, "image/jpeg", b"\xff\xd8\xff\xe0 truncated", 400, "image"),
        ("/features", {}, "image/png", b"", 400, "empty"),
        ("/features", {"taps": "us9"}, "image/png", "PHOTO", 400, "no tap us9"),
        ("/features", {"size": "256x256"}, "image/png", "PHOTO", 422, "outside the model's range"),
        ("/features", {"size": "100x64"}, "image/png", "PHOTO", 422, "multiple of 64"),
        ("/features", {"size": "big"}, "image/png", "PHOTO", 400, "HxW"),
        ("/features", {"colour": "red"}, "image/png", "PHOTO", 400, "unknown parameter"),
        ("/features", {}, "image/png", "HUGE", 413, "pixel limit"),
        ("/match", {}, "image/png", "PHOTO", 415, "application/json"),
        ("/match", {}, "application/json", b"{not json", 400, "not valid JSON"),
        ("/match", {}, "application/json", b"[1, 2]", 400, "JSON object"),
        ("/match", {}, "application/json", "MATCH_FAR", 400, "outside the source image"),
        ("/match", {}, "application/json", "MATCH_TAP", 400, "no tap us9"),
        ("/match", {}, "application/json", "MATCH_MANY", 413, "above the limit"),
        ("/match", {}, "application/json", "MATCH_B64", 400, "base64"),
        ("/nowhere", {}, None, b"", 404, "no route"),
    ],
)
def test_bad_requests_are_4xx_with_one_line(
    service: FeatureService,
    path: str,
    query: dict[str, str],
    content_type: str | None,
    body: bytes | str,
    status: int,
    words: str,
) -> None:
    _, photo = _photo(6)
    bodies = {
        "PHOTO": photo,
        "HUGE": _png(np.zeros((301, 300, 3), np.uint8)),
        "MATCH_FAR": _match_body(photo, photo, [[95.0, 10.0]]),
        "MATCH_TAP": _match_body(photo, photo, [[5.0, 10.0]], tap="us9"),
        "MATCH_MANY": _match_body(photo, photo, [[1.0, 1.0]] * 17),
        "MATCH_B64": json.dumps({"source": "%%%", "target": "", "points": [[1, 1]]}).encode(),
    }
    payload = bodies[body] if isinstance(body, str) else body
    got, answer, _ = _ask(service, HttpRequest("POST", path, query, content_type, payload))
    message = json.loads(answer)["error"]
    assert got == status and words in message and "\n" not in message


def test_request_body_limit() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"x" * 100

    async def read(declared: str | None, limit: int) -> bytes:
        return await read_body(chunks(), declared, limit)

    assert len(asyncio.run(read(None, 500))) == 500
    for declared in (None, "10000"):
        with pytest.raises(ClientError) as refused:
            asyncio.run(read(declared, 499))
        assert refused.value.status == 413


def test_match_equals_direct_matching(service: FeatureService, direct: FeatureExtractor) -> None:
    (src_rgb, src_png), (tgt_rgb, tgt_png) = _photo(7, 70, 90), _photo(8, 50, 120)
    points = [[3.0, 4.0], [60.5, 33.0], [89.0, 69.0]]
    body = _match_body(src_png, tgt_png, points, tap="us3")
    status, answer, _ = _ask(service, HttpRequest("POST", "/match", {}, "application/json", body))
    assert status == 200
    result = json.loads(answer)
    src, tgt = direct([src_rgb])["us3"][0], direct([tgt_rgb])["us3"][0]
    want = match_points(src, tgt, torch.tensor(points), (70, 90), (50, 120))
    assert result["points"] == want.points.tolist() and result["tap"] == "us3"
    assert np.allclose(result["scores"], want.scores.numpy(), atol=1e-5)


# ---- the Ray Serve deployment -----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


CACHE_BYTES = 150_000


@pytest.fixture(scope="module", params=["local", "ray"])
def server(request: pytest.FixtureRequest, artifact: Path) -> Iterator[str]:
    """The same app on the local server and on Ray Serve (one local Ray instance for the module)."""
    model = ServeConfig(str(artifact), threads=1, max_batch=8, batch_wait_ms=100, limits=LIMITS)
    config = AppConfig((model,), cache_bytes=CACHE_BYTES, limits=LIMITS)
    if request.param == "local":
        with LocalServer(config, port=0) as local:
            local.wait_ready(120)
            yield local.url
        return
    from ray import serve

    from cleandift_deploy.serve.ray_serve import ReplicaResources, deploy, wait_ready
    from cleandift_deploy.serve.ray_session import ray_session

    port = _free_port()
    with ray_session(None, 1):
        try:
            wait_ready(deploy(config, ReplicaResources(1, 1.0, 0.0), "127.0.0.1", port), 120)
            yield f"http://127.0.0.1:{port}"
        finally:
            serve.shutdown()


def _http(
    url: str, body: bytes | None = None, content_type: str = "image/png"
) -> tuple[int, bytes, dict[str, str]]:
    headers = {"Content-Type": content_type} if body is not None else {}
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.read(), {k.lower(): v for k, v in answer.headers.items()}
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read(), {k.lower(): v for k, v in refused.headers.items()}


def test_server_ready_and_manifest(server: str, direct: FeatureExtractor) -> None:
    status, body, _ = _http(f"{server}/readyz")
    assert status == 200 and json.loads(body) == {"ready": True, "error": None}
    status, body, headers = _http(f"{server}/manifest")
    assert json.loads(body)["taps"] == json.loads(direct.manifest.to_json())["taps"]
    assert headers["x-manifest-sha256"] == direct.manifest_sha256


def test_concurrent_requests_are_batched_and_correct(server: str, direct: FeatureExtractor) -> None:
    photos = [_photo(seed, 40 + 5 * seed, 90 - 3 * seed) for seed in range(12)]
    with ThreadPoolExecutor(len(photos)) as pool:
        answers = list(pool.map(lambda p: _http(f"{server}/features", p[1]), photos))
    sizes = [int(headers["x-batch-size"]) for status, _, headers in answers if status == 200]
    assert len(sizes) == len(photos) and max(sizes) > 1, sizes
    want = direct([rgb for rgb, _ in photos])
    for index, (_, body, _) in enumerate(answers):
        tensors = load_safetensors(body)
        for tap in ("us3", "us6"):
            figures = agreement(want[tap][index : index + 1], tensors[tap][None])
            assert figures["cosine_min"] >= 0.99999 and figures["max_abs"] < 1e-4
    stats = json.loads(_http(f"{server}/stats")[1])
    assert stats["max_batch_seen"] > 1
    (model,) = stats["models"].values()
    assert model["engine"]["backend"] == "onnxruntime" and model["calibration"] is None


def test_bad_input_is_refused_and_the_server_keeps_serving(server: str) -> None:
    _, png = _photo(20)
    bad = [
        (f"{server}/features", b"\x89PNG\r\n\x1a\n broken", "image/png", 400),
        (f"{server}/features", png, "text/plain", 415),
        (f"{server}/features", b"x" * 300_000, "image/png", 413),
        (f"{server}/features?taps=us9", png, "image/png", 400),
        (f"{server}/features?size=512x512", png, "image/png", 422),
        (f"{server}/match", b"{}", "application/json", 400),
    ]
    for url, body, content_type, status in bad:
        got, answer, _ = _http(url, body, content_type)
        assert (got, "error" in json.loads(answer)) == (status, True), (url, answer)
    status, body, _ = _http(f"{server}/features?taps=us3", png)
    assert status == 200 and list(load_safetensors(body)) == ["us3"]
    assert _http(f"{server}/healthz")[0] == 200


def test_match_over_http(server: str, direct: FeatureExtractor) -> None:
    (src_rgb, src_png), (tgt_rgb, tgt_png) = _photo(30), _photo(31, 64, 64)
    points = [[10.0, 10.0], [45.0, 60.0]]
    status, answer, _ = _http(
        f"{server}/match", _match_body(src_png, tgt_png, points), "application/json"
    )
    assert status == 200
    src, tgt = direct([src_rgb])["us6"][0], direct([tgt_rgb])["us6"][0]
    want = match_points(src, tgt, torch.tensor(points), (70, 90), (64, 64))
    assert json.loads(answer)["points"] == want.points.tolist()


def _post_json(url: str, value: object) -> tuple[int, dict[str, object]]:
    status, body, _ = _http(url, json.dumps(value).encode(), "application/json")
    return status, json.loads(body)


def _upload(server: str, png: bytes) -> str:
    status, body, _ = _http(f"{server}/images", png)
    assert status == 200, body
    return str(json.loads(body)["id"])


def test_page_routes_answer_as_the_toolkit_matches(server: str, direct: FeatureExtractor) -> None:
    """/similarity: match and score of match_points, heatmap = DIFT's upsample-normalise-dot;
    /matches: match_dense's mutual pairs."""
    (src_rgb, src_png), (tgt_rgb, tgt_png) = _photo(40, 70, 90), _photo(41, 60, 100)
    source, target = _upload(server, src_png), _upload(server, tgt_png)
    assert source == content_id(src_png) and _upload(server, src_png) == source
    src, tgt = direct([src_rgb])["us3"][0], direct([tgt_rgb])["us3"][0]
    point = [33.0, 21.0]
    request = {"source": source, "target": target, "point": point, "tap": "us3"}
    status, reply = _post_json(f"{server}/similarity", {**request, "format": "float16"})
    assert status == 200, reply
    want = match_points(src, tgt, torch.tensor([point]), (70, 90), (60, 100))
    assert np.allclose(reply["match"], want.points[0].numpy(), atol=0.5)
    assert abs(float(reply["score"]) - float(want.scores[0])) < 1e-4  # type: ignore[arg-type]
    heat = reply["heatmap"]
    assert isinstance(heat, dict) and (heat["height"], heat["width"]) == (60, 100)
    values = np.frombuffer(base64.b64decode(heat["data"]), "<f2").reshape(60, 100)
    up_src = F.normalize(F.interpolate(src[None], (70, 90), mode="bilinear"), dim=1)[0]
    up_tgt = F.normalize(F.interpolate(tgt[None], (60, 100), mode="bilinear"), dim=1)[0]
    reference = torch.einsum("c,chw->hw", up_src[:, 21, 33], up_tgt)
    assert np.abs(values - reference.numpy()).max() < 2e-3
    status, png_reply = _post_json(f"{server}/similarity", {**request, "size": [30, 50]})
    shown = Image.open(io.BytesIO(base64.b64decode(png_reply["heatmap"]["data"])))  # type: ignore[index]
    assert status == 200 and shown.size == (50, 30)
    status, found = _post_json(
        f"{server}/matches", {"source": source, "target": target, "n": 5, "tap": "us3"}
    )
    assert status == 200, found
    dense = match_dense(src.flatten(1).T, tgt.flatten(1).T, mutual=True)
    assert np.allclose(found["scores"], dense.scores.sort(descending=True).values[:5], atol=1e-4)
    count = min(5, len(dense.scores))
    assert len(found["source"]) == len(found["target"]) == count > 0  # type: ignore[arg-type]


def test_page_routes_refuse_bad_input_and_keep_serving(server: str) -> None:
    _, png = _photo(42)
    known = _upload(server, png)
    unknown = "0" * 32
    good = {"source": known, "target": known, "point": [5, 5]}
    bad: list[tuple[str, dict[str, object], int, str]] = [
        ("/similarity", {**good, "target": unknown}, 404, "unknown image"),
        ("/similarity", {**good, "source": "../etc/passwd"}, 400, "source"),
        ("/similarity", {**good, "point": [500, 5]}, 400, "outside the source image"),
        ("/similarity", {**good, "tap": "us9"}, 400, "no tap us9"),
        ("/similarity", {**good, "model": "other"}, 404, "no model"),
        ("/similarity", {**good, "size": [5000, 5000]}, 400, "heatmap size"),
        ("/similarity", {**good, "colour": "red"}, 400, "colour"),
        ("/matches", {"source": known, "target": known, "n": 0}, 400, "n"),
    ]
    for route, value, status, words in bad:
        got, reply = _post_json(f"{server}{route}", value)
        message = str(reply["error"])
        assert (got, words in message, "\n" in message) == (status, True, False), (route, reply)
    assert _http(f"{server}/images", b"not an image")[0] == 400
    assert _http(f"{server}/images", png, "text/plain")[0] == 415
    assert _http(f"{server}/images/{unknown}")[0] == 404
    assert _post_json(f"{server}/similarity", good)[0] == 200
    paths = json.loads(_http(f"{server}/openapi.json")[1])["paths"]
    assert {"/images", "/similarity", "/matches", "/features", "/match", "/predict"} <= set(paths)
    status, answer = _http(f"{server}/predict", png, "image/png")[:2]
    assert status == 404 and b"no probe inside" in answer  # a features model: no map to return
    status, page, headers = _http(f"{server}/")
    assert status == 200 and b'id="source"' in page and "access-control-allow-origin" not in headers


def test_image_cache_stays_within_its_byte_limit(server: str) -> None:
    ids = [_upload(server, _photo(50 + seed, 70, 90)[1]) for seed in range(10)]
    cache = json.loads(_http(f"{server}/stats")[1])["cache"]
    assert cache["limit"] == CACHE_BYTES and 0 < cache["bytes"] <= CACHE_BYTES
    assert cache["evictions"] > 0
    assert _http(f"{server}/images/{ids[0]}")[0] == 404
    assert _http(f"{server}/images/{ids[-1]}")[0] == 200


def test_cli_refuses_a_missing_artifact_before_starting_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(["serve", str(tmp_path / "none.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "does not exist" in err and len(err.splitlines()) == 1


def test_padded_images_match_in_original_pixels() -> None:
    """A padded image covers only the top-left part of the canvas: points go there and back."""
    from cleandift_deploy.runtime.preprocess import Placement
    from cleandift_deploy.serve.matching import match_in_pixels

    features = torch.randn(16, 8, 8)
    placement = Placement(original=(30, 45), content=(43, 64))
    points = [(6.0, 5.0), (20.0, 11.0), (37.0, 23.0)]  # interior: border pixels tie
    side = (features, placement, (64, 64))
    found, scores = match_in_pixels(side, side, points, "nn")
    assert torch.allclose(scores, torch.ones(3), atol=1e-5)
    assert (found - torch.tensor(points)).abs().max() <= 0.75, found
    with pytest.raises(ValueError, match="outside the source image"):
        match_in_pixels(side, side, [(50.0, 5.0)], "nn")
