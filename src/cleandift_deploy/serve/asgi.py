"""THE app: one FastAPI definition carried by the local uvicorn server and by Ray Serve alike.

Routes (all in the OpenAPI schema at `/openapi.json`): the page at `/` and its files under `/page/`;
`POST /features`, `POST /match`, `POST /predict` (the feature server's API, `?model=` picks a served
model); `POST /images` (image bytes -> `{id, width, height}`, id = content hash), `GET
/images/{id}`, `POST /similarity` (one point's heatmap over the target, best match and score), `POST
/matches` (top-N (mutual) nearest-neighbour pairs); `GET /models`, `/healthz`, `/readyz`,
`/manifest`, `/stats`. Client faults are 4xx with `{"error": "one line"}`; a request body past the
limit is refused (413) while it streams in. No route reads a file path from the request: the page's
files are read once at start-up into a fixed table. CORS stays off (same origin only).
"""

from __future__ import annotations

from importlib import resources
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from .app import HttpRequest, Reply
from .cache import ID_HEX
from .hub import ServeHub, describe
from .inputs import ClientError

PAGE_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".svg": "image/svg+xml",
}
IMAGE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
JSON_BODY: dict[str, Any] = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": {}}}}
}
ImageId = Annotated[str, Field(pattern=f"^[0-9a-f]{{{ID_HEX}}}$", description="an id from /images")]


class ImageInfo(BaseModel):
    """An uploaded image: its content-hash id and its size in pixels."""

    id: str
    width: int
    height: int


class SimilarityRequest(BaseModel):
    """One source point's similarity over the target image."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    source: ImageId
    target: ImageId
    point: tuple[float, float] = Field(description="(x, y) in source pixels, pixel centres")
    tap: str | None = Field(None, description="feature tap (default: the model's last)")
    model: str | None = Field(None, description="served model name (default: the first)")
    size: tuple[int, int] | None = Field(
        None, description="(height, width) of the heatmap (default: the target's size)"
    )
    format: Literal["png", "float16"] = "png"


class Heatmap(BaseModel):
    """The cosine map, min-max scaled through a colour map (png) or raw little-endian float16,
    row-major, base64."""

    format: str
    width: int
    height: int
    min: float
    max: float
    colour_map: str | None
    data: str


class SimilarityReply(BaseModel):
    """Best match (target pixels), its cosine, the heatmap, and where the time went."""

    model_config = ConfigDict(protected_namespaces=())
    model: str
    tap: str
    point: list[float]
    match: list[float]
    score: float
    heatmap: Heatmap
    timing_ms: dict[str, float]


class MatchesRequest(BaseModel):
    """Top-N nearest-neighbour pairs between the two images' feature cells."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    source: ImageId
    target: ImageId
    n: int = Field(50, ge=1, le=4096, description="how many pairs, best first")
    mutual: bool = Field(True, description="only mutual nearest neighbours")
    min_score: float = Field(-1.0, ge=-1.0, le=1.0, description="drop pairs scoring below")
    tap: str | None = None
    model: str | None = None


class MatchesReply(BaseModel):
    """Pairs as (x, y) source and target pixels (cell centres), with their cosines."""

    model_config = ConfigDict(protected_namespaces=())
    model: str
    tap: str
    mutual: bool
    source: list[list[float]]
    target: list[list[float]]
    scores: list[float]
    timing_ms: dict[str, float]


class _TooLarge(Exception):
    """The body grew past the limit while streaming in."""


class BodyLimit:
    """ASGI middleware: refuse (413) a body that declares or streams more than `limit` bytes."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            message = f"request body of {int(declared)} bytes exceeds the {self.limit}-byte limit"
            await _json(413, {"error": message})(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise _TooLarge
            return message

        await self.app(scope, counted, send)


def _json(status: int, value: object) -> JSONResponse:
    return JSONResponse(value, status)


def _error(status: int, message: str) -> JSONResponse:
    return _json(status, {"error": " ".join(str(message).split())})


def _response(reply: Reply) -> Response:
    return Response(reply.body, reply.status, headers=reply.headers, media_type=reply.content_type)


def page_files() -> dict[str, tuple[bytes, str]]:
    """The page's files, read once from the package: name -> (bytes, content type)."""
    files: dict[str, tuple[bytes, str]] = {}
    root = resources.files(__package__).joinpath("page")

    def walk(folder: Any, prefix: str) -> None:
        for entry in folder.iterdir():
            if entry.is_dir():
                walk(entry, f"{prefix}{entry.name}/")
            else:
                kind = PAGE_TYPES.get("." + entry.name.rsplit(".", 1)[-1])
                if kind:
                    files[prefix + entry.name] = (entry.read_bytes(), kind)

    walk(root, "")
    return files


def _validation_message(err: RequestValidationError) -> str:
    first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return f"{where or 'body'}: {first.get('msg', 'invalid')}"


def _install_errors(app: FastAPI, routes: list[str]) -> None:
    @app.exception_handler(ClientError)
    async def client_error(request: Request, err: ClientError) -> JSONResponse:
        return _error(err.status, err.message)

    @app.exception_handler(_TooLarge)
    async def too_large(request: Request, err: _TooLarge) -> JSONResponse:
        return _error(413, "request body exceeds the size limit")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return _error(400, _validation_message(err))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        if err.status_code == 404:
            return _error(404, f"no route {request.url.path}: use {', '.join(routes)}")
        if err.status_code == 405:
            return _error(405, f"{request.url.path} does not take {request.method}")
        return _error(err.status_code, str(err.detail))

    @app.exception_handler(Exception)
    async def internal(request: Request, err: Exception) -> JSONResponse:
        return _error(500, f"internal error: {type(err).__name__}: {err}")


def build_app(hub: ServeHub) -> FastAPI:
    """The ASGI app over one hub (the local server's, or one Ray Serve replica's)."""
    app = FastAPI(
        title="cleandift-deploy",
        version=__version__,
        summary="Diffusion features, matching and a correspondence page",
        docs_url="/docs",
        redoc_url=None,
    )
    files = page_files()
    _page_routes(app, files)
    _feature_routes(app, hub)
    _page_api(app, hub)
    paths = [getattr(r, "path", "") for r in app.routes if getattr(r, "include_in_schema", 0)]
    routes = sorted(p for p in paths if not p.startswith("/page/"))
    _install_errors(app, routes)
    app.add_middleware(BodyLimit, limit=hub.config.limits.max_request_bytes)
    return app


def _page_routes(app: FastAPI, files: dict[str, tuple[bytes, str]]) -> None:
    @app.get("/", response_class=Response, summary="The correspondence page")
    async def index() -> Response:
        body, kind = files["index.html"]
        return Response(body, media_type=kind)

    @app.get("/page/{name:path}", response_class=Response, summary="A file of the page")
    async def page_file(name: str) -> Response:
        if name not in files:
            raise ClientError(404, f"the page has no file {name!r}")
        body, kind = files[name]
        return Response(body, media_type=kind, headers={"Cache-Control": "no-cache"})


async def _http_request(request: Request) -> HttpRequest:
    query = {k: v for k, v in request.query_params.items() if k != "model"}
    body = await request.body()
    return HttpRequest(
        request.method, request.url.path, query, request.headers.get("content-type"), body
    )


def _feature_routes(app: FastAPI, hub: ServeHub) -> None:
    @app.get("/healthz", summary="The process is up")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Every model is loaded and warmed up (503 until then)")
    async def readyz() -> JSONResponse:
        ready = hub.ready
        return _json(200 if ready else 503, {"ready": ready, "error": hub.load_error})

    @app.get("/models", summary="The served models, first is the default")
    async def models() -> list[dict[str, Any]]:
        return [describe(name, service) for name, service in hub.services.items()]

    @app.get("/manifest", summary="A model's manifest")
    async def manifest(model: str | None = None) -> Response:
        service = hub.services[hub.name(model)]
        headers = {"X-Manifest-Sha256": service.manifest_sha256}
        if service.extractor is not None:
            headers["X-Engine"] = service.extractor.selection.backend
            headers["X-Engine-Reason"] = service.extractor.selection.reason
        return Response(service.manifest.to_json(), headers=headers, media_type="application/json")

    @app.get("/stats", summary="Requests, batch sizes, engines and the cache")
    async def stats() -> dict[str, Any]:
        return hub.stats()

    async def _handled(request: Request, model: str | None, images: int) -> Response:
        """A request the model's service answers through its batcher, announced as `images`
        images arriving so a batch being filled waits for them."""
        name = hub.name(model)
        batcher = hub.batchers[name]
        with batcher.arriving(images):
            parsed = await _http_request(request)
            return _response(await hub.services[name].handle(parsed, batcher))

    @app.post(
        "/features",
        response_class=Response,
        summary="Image bytes -> safetensors of the taps",
        openapi_extra=IMAGE_BODY,
        responses={200: {"content": {"application/octet-stream": {}}}},
    )
    async def features(
        request: Request, taps: str | None = None, size: str | None = None, model: str | None = None
    ) -> Response:
        return await _handled(request, model, 1)

    @app.post(
        "/match",
        summary="Two base64 images and source points -> matched points and scores",
        openapi_extra=JSON_BODY,
    )
    async def match(
        request: Request, size: str | None = None, model: str | None = None
    ) -> Response:
        return await _handled(request, model, 2)

    @app.post(
        "/predict",
        response_class=Response,
        summary="Image bytes -> the probe's map as PNG (a graph exported with --head)",
        openapi_extra=IMAGE_BODY,
        responses={200: {"content": {"image/png": {}}}},
    )
    async def predict(
        request: Request, size: str | None = None, model: str | None = None
    ) -> Response:
        return await _handled(request, model, 1)


def _page_api(app: FastAPI, hub: ServeHub) -> None:
    @app.post(
        "/images", summary="Keep an image; its id is its content hash", openapi_extra=IMAGE_BODY
    )
    async def add_image(request: Request) -> ImageInfo:
        body = await request.body()
        return ImageInfo(**hub.add_image(body, request.headers.get("content-type")))

    @app.get("/images/{image_id}", summary="Whether an image is kept (404 when not)")
    async def image(image_id: Annotated[str, Path()]) -> ImageInfo:
        return ImageInfo(**hub.image_info(image_id))

    @app.post("/similarity", summary="One point's heatmap over the target, best match, score")
    async def similarity(body: SimilarityRequest) -> SimilarityReply:
        return SimilarityReply(**await hub.similarity(body.model_dump()))

    @app.post("/matches", summary="Top-N (mutual) nearest-neighbour pairs")
    async def matches(body: MatchesRequest) -> MatchesReply:
        return MatchesReply(**await hub.matches(body.model_dump()))
