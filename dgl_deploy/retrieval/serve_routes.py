"""`dgl serve`'s HTTP routes: the FastAPI app around an opened service (`build_app`), its routes added
group by group (the page, the status, the searches, the media), the error answers, and the guards in front.

Every error, from bad input to an unknown path, is a 4xx/5xx with the body {"error": "..."} (`error_response`).
The route list is in `retrieval.serve`'s docstring.

Imported when an app is built (FastAPI is an extra); no `from __future__ import annotations`: FastAPI reads the
routes' annotations at runtime.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException
from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable

from dgl_deploy.data.video import VideoError
from dgl_deploy.errors import DGLError
from dgl_deploy.retrieval.serve_guards import (
    PAGE_HEADERS,
    AnswerHeaders,
    HostGuard,
    RequestGuard,
    TokenGuard,
    check_hosts,
    check_token,
    docs_headers,
)
from dgl_deploy.retrieval.serve_media import MediaError, media_type
from dgl_deploy.retrieval.serve_metrics import RequestMetrics, ServeMetrics
from dgl_deploy.retrieval.serve_service import SearchService, ServeSettings

STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8",
                "icon.svg": "image/svg+xml"}
PUBLIC_PATHS = frozenset({"/", "/docs", "/openapi.json",
                          *(f"/static/{name}" for name in STATIC_FILES)})  # no index data: no token needed
MEDIA_HEADERS = {"cache-control": "private, max-age=3600"}  # videos, posters, previews
VIDEO_ID = Query(..., min_length=1, max_length=4096)  # an indexed video's id, as recorded in the index
MOMENT_START = Query(0.0, ge=0, le=1e9, description="the moment's start, seconds")


def build_app(service: SearchService, token: str | None = None, allowed_hosts: Sequence[str] = ()) -> FastAPI:
    """The routes, limits, token (or Host) check, security headers and error mapping around an opened service;
    the service is closed when the app shuts down."""
    check_token(token)
    hosts = check_hosts(allowed_hosts)
    # with a token, /docs offers an "Authorize" button (the check itself is TokenGuard's)
    bearer = [Depends(HTTPBearer(auto_error=False))] if token else []
    app = FastAPI(title="dgl-deploy search", version="1", lifespan=_closing(service), dependencies=bearer,
                  docs_url=None, redoc_url=None)
    app.state.service = service
    metrics = ServeMetrics(service)
    add_page_routes(app)
    add_status_routes(app, service, metrics)
    add_search_routes(app, service)
    add_media_routes(app, service)
    add_error_handlers(app)
    add_guards(app, service.settings, token, hosts, metrics)
    return app


def _closing(service: SearchService) -> Callable[[FastAPI], Any]:
    """The app's lifespan: nothing at start (the service is open already), `service.close()` at shutdown."""
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    return lifespan


def add_guards(app: FastAPI, settings: ServeSettings, token: str | None, hosts: frozenset[str],
               metrics: ServeMetrics) -> None:
    """The middleware, innermost first: request limits, then the token (or Host) check, so a refused request never
    counts as pending; the security headers on every answer, refusals included; outermost, the request metrics, so
    every request is counted."""
    app.add_middleware(RequestGuard, limits=settings, error=error_response)
    if token:
        app.add_middleware(TokenGuard, token=token, public=PUBLIC_PATHS, error=error_response)
    else:
        app.add_middleware(HostGuard, hosts=hosts, error=error_response)
    app.add_middleware(AnswerHeaders)
    app.add_middleware(RequestMetrics, metrics=metrics,
                       routes=lambda: {getattr(route, "path", "") for route in app.routes})


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """Every error answer of the app: {"error": message}."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def add_error_handlers(app: FastAPI) -> None:
    """Map every exception to `error_response`: validation 422, HTTP errors as raised, bad input (DGLError) 400,
    refused media as MediaError says (503 with Retry-After), anything else 500 naming only its type."""
    for kind, handler in ((RequestValidationError, _bad_request), (HTTPException, _http_error),
                          (DGLError, _bad_input), (MediaError, _media_refused), (Exception, _internal)):
        app.add_exception_handler(kind, handler)


async def _bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming the first invalid parameter and why."""
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "body"))
    return error_response(422, f"{where}: {first.get('msg', 'invalid request')}")


async def _http_error(_: Request, exc: HTTPException) -> JSONResponse:
    return error_response(exc.status_code, str(exc.detail), exc.headers)


async def _bad_input(_: Request, exc: DGLError) -> JSONResponse:
    return error_response(400, str(exc))


async def _media_refused(_: Request, exc: MediaError) -> JSONResponse:
    return error_response(exc.status, str(exc), {"retry-after": "1"} if exc.status == 503 else None)


async def _internal(_: Request, exc: Exception) -> JSONResponse:
    """500 naming only the exception's type (its message may hold paths)."""
    return error_response(500, f"internal error ({type(exc).__name__})")


def add_page_routes(app: FastAPI) -> None:
    """The search page and its static files (retrieval/static/, no data in them), and the API's /docs page."""
    static = resources.files("dgl_deploy.retrieval") / "static"
    page = {name: (static / name).read_bytes() for name in ("index.html", *STATIC_FILES)}
    docs = get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - Swagger UI").body

    @app.get("/", include_in_schema=False)
    async def search_page() -> Response:
        return Response(page["index.html"], media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def static_file(name: str) -> Response:
        if name not in STATIC_FILES:
            raise HTTPException(404, "Not Found")
        return Response(page[name], media_type=STATIC_FILES[name], headers=PAGE_HEADERS)

    @app.get("/docs", include_in_schema=False)
    async def api_docs() -> Response:
        return Response(docs, media_type="text/html; charset=utf-8", headers=docs_headers(docs))


def add_status_routes(app: FastAPI, service: SearchService, metrics: ServeMetrics) -> None:
    """/health (what is served) and /metrics (Prometheus text format)."""

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return service.health()

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        body, content_type = metrics.render()
        return Response(body, headers={"content-type": content_type})


def add_search_routes(app: FastAPI, service: SearchService) -> None:
    """The searches (text, uploaded video, an indexed video), bounded by the service's settings (query length, k)."""
    settings = service.settings
    top_k = Query(10, ge=1, le=settings.max_k)
    per_video_query = Query(0, ge=0, le=settings.max_k, description="moments per video (default 0 = no limit; a "
                            "segmented set's moments are merged by temporal NMS)")

    @app.get("/search")
    async def search_text(q: str = Query(..., min_length=1, max_length=settings.max_query_chars),
                          k: int = top_k, per_video: int = per_video_query) -> dict[str, Any]:
        return await _timed(service.search_text(q, k, per_video))

    @app.post("/search/video")
    async def search_video(file: UploadFile = File(...), k: int = top_k, per_video: int = per_video_query) -> Any:
        name = file.filename or "upload"
        try:
            return await _timed(service.search_video(file.file, name, k, per_video))
        except VideoError as exc:
            return error_response(400, f"{name}: {exc.reason}")

    @app.get("/search/similar")
    async def search_similar(id: str = VIDEO_ID,
                             row: int | None = Query(None, ge=0, description="the moment's row (default: the first)"),
                             k: int = top_k, per_video: int = per_video_query) -> dict[str, Any]:
        return await _timed(service.search_similar(id, row, k, per_video))


async def _timed(search: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """The search's result with the time it took (`took_ms`)."""
    started = time.perf_counter()
    result = await search
    return {**result, "took_ms": round((time.perf_counter() - started) * 1000, 2)}


def add_media_routes(app: FastAPI, service: SearchService) -> None:
    """The indexed videos (by id, never by path: `serve_media`), their posters and previews."""

    @app.head("/video", include_in_schema=False)
    @app.get("/video")
    async def video(id: str = VIDEO_ID) -> Any:
        """The indexed video `id` (as recorded in the index), with HTTP range requests (206) for seeking."""
        path = await asyncio.to_thread(service.videos.resolve, id)
        return MediaFile(path, media_type=media_type(path), headers=MEDIA_HEADERS)

    @app.get("/poster", response_class=FileResponse)
    async def poster(id: str = VIDEO_ID, start: float = MOMENT_START) -> Any:
        """JPEG frame of video `id` at `start` (0, or a moment start of a segmented set)."""
        path = await service.posters.get(id, start)
        return MediaFile(path, media_type="image/jpeg", headers=MEDIA_HEADERS)

    @app.head("/preview", include_in_schema=False)
    @app.get("/preview")
    async def preview(id: str = VIDEO_ID, start: float = MOMENT_START) -> Any:
        """A short H.264 MP4 of the moment of `id` at `start` (time 0 = the moment's start), for files a browser
        cannot play (made once, cached beside the posters; `data.preview` bounds its length and size)."""
        path = await service.previews.get(id, start)
        return MediaFile(path, media_type="video/mp4", headers=MEDIA_HEADERS)


class MediaFile(FileResponse):
    """A file answer whose bad Range is the app's JSON error (400, 416); several ranges get the whole file (a
    multipart body is not a media type)."""

    @classmethod
    def _parse_range_header(cls, http_range: str, file_size: int) -> list[tuple[int, int]]:
        try:
            ranges = super()._parse_range_header(http_range, file_size)
        except MalformedRangeHeader as exc:
            raise HTTPException(400, f"bad Range header: {exc.content}") from None
        except RangeNotSatisfiable as exc:
            raise HTTPException(416, f"Range not satisfiable: the file has {exc.max_size} bytes",
                                {"content-range": f"bytes */{exc.max_size}"}) from None
        return ranges if len(ranges) == 1 else []


__all__ = ["build_app", "error_response", "STATIC_FILES", "PUBLIC_PATHS"]
