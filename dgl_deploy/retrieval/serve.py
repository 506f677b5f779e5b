"""`dgl serve`: a small HTTP search service (FastAPI) over one model and one index.

The encoder and the index (an embeddings .npy searched exactly, or a `dgl index build` folder) are
opened once, when the app is created; the model must be the one that made the embeddings, and each of
its towers is run once: an export whose files were changed (checksums, graph identity, shapes) refuses
to start instead of answering every search with an error.

  GET  /health                        model, backend, rows, index kind
  GET  /search?q=TEXT&k=10            text -> videos
  POST /search/video?k=10 (file=...)  uploaded video -> videos (multipart form field `file`)

Every error, from bad input to an unknown path, is a 4xx/5xx with the body {"error": "..."}.
Bounds: query length, 1 <= k <= max_k, upload size (Content-Length required, checked before the body is
read: 411/413), the time to receive a request body (`body_timeout`: 408), decode time (`decode_timeout`).
At most `max_pending` search requests are in progress at once (being received, decoded, or waiting for
the encoder); more get 503 with a Retry-After header at once.

Concurrency: the routes are async. Uploads are decoded by a pool of `decoders` decoder processes, outside
the encoder; the encoder runs one call at a time on its own thread (backends are not assumed thread-safe),
text queries before queued videos, so text latency stays low while uploads decode. Index searches run on
worker threads, concurrently.
"""

import asyncio  # no `from __future__ import annotations`: FastAPI reads the routes' annotations at runtime
import itertools
import os
import queue
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from dgl_deploy.data.discover import VIDEO_EXTENSIONS
from dgl_deploy.errors import DGLError
from dgl_deploy.limits import check_number
from dgl_deploy.retrieval.ann_index import AnnIndex, SearchIndex, open_index
from dgl_deploy.retrieval.query import check_encoder, hits_to_dicts
from dgl_deploy.runtime.backends.base import Encoder

if TYPE_CHECKING:  # decord is imported when a service starts, not with the CLI
    from dgl_deploy.data.video import DecodeProcess

INSTALL_HINT = "the HTTP service needs FastAPI and uvicorn: pip install 'dgl-deploy[serve]'"
SEARCH_PATHS = "/search"  # the bounded routes (prefix); /health is never refused
TEXT, VIDEO, STOP = 0, 1, 2  # encoder queue priorities: text first

# (min, max) of each setting; the CLI options carry the same bounds
LIMITS: dict[str, tuple[float, float]] = {
    "max_upload_mb": (0.001, 4096.0), "max_query_chars": (1, 100_000), "max_k": (1, 100_000),
    "decode_timeout": (0.001, 86400.0), "max_pending": (1, 100_000), "decoders": (1, 64),
    "body_timeout": (0.001, 86400.0),
}


@dataclass(frozen=True)
class ServeSettings:
    """Limits of the service, checked against LIMITS on creation (DGLError)."""

    max_upload_mb: float = 64.0  # largest accepted video upload
    max_query_chars: int = 1000  # longest accepted query text
    max_k: int = 1000  # most results per query
    decode_timeout: float = 30.0  # seconds allowed to decode one uploaded video
    max_pending: int = 64  # search requests in progress (received, decoded, encoded) before new ones get 503
    decoders: int = 2  # video decoder processes
    body_timeout: float = 60.0  # seconds allowed to receive a request body (a stalled upload gets 408)

    def __post_init__(self) -> None:
        for setting in fields(self):
            check_number(setting.name, getattr(self, setting.name), *LIMITS[setting.name], setting.type)


class EncoderQueue:
    """One thread runs every encoder call, in priority order (TEXT before VIDEO), first come first served within."""

    def __init__(self) -> None:
        self._jobs: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        threading.Thread(target=self._work, name="dgl-serve-encoder", daemon=True).start()

    def submit(self, priority: int, job: Callable[[], np.ndarray]) -> "Future[np.ndarray]":
        future: Future[np.ndarray] = Future()
        self._jobs.put((priority, next(self._order), job, future))
        return future

    def _work(self) -> None:
        while True:
            priority, _, job, future = self._jobs.get()
            if priority == STOP:
                return
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(job())
                except BaseException as exc:  # handed to the waiting request
                    future.set_exception(exc)

    def close(self) -> None:
        """Stop the thread once the queued calls have run."""
        self._jobs.put((STOP, next(self._order), None, None))


class DecoderPool:
    """`size` decoder processes, each used by one thread of a pool of that size (DecodeProcess is not thread-safe)."""

    def __init__(self, size: int) -> None:
        from dgl_deploy.data.video import DecodeProcess

        self._decoders = [DecodeProcess() for _ in range(size)]
        self._idle: queue.SimpleQueue[DecodeProcess] = queue.SimpleQueue()
        for decoder in self._decoders:
            self._idle.put(decoder)
        self._threads = ThreadPoolExecutor(size, thread_name_prefix="dgl-serve-decode")

    def submit(self, job: "Callable[[DecodeProcess], np.ndarray]") -> "Future[np.ndarray]":
        return self._threads.submit(self._run, job)

    def _run(self, job: "Callable[[DecodeProcess], np.ndarray]") -> np.ndarray:
        decoder = self._idle.get()
        try:
            return job(decoder)
        finally:
            self._idle.put(decoder)

    def close(self) -> None:
        """Kill the decoder processes (a decode in progress fails) and stop the threads."""
        self._threads.shutdown(wait=False, cancel_futures=True)
        for decoder in self._decoders:
            decoder.close()


def verify_encoder(encoder: Encoder) -> None:
    """Run each tower once on a dummy input. Backends check an export's files (checksums, graph identity,
    shapes) when a tower is first used: a changed file fails here, at start-up, not on every search."""
    size = encoder.image_size
    outputs = {"text": encoder.encode_text(["start-up check"]),
               "video": encoder.encode_videos(np.zeros((1, encoder.frames, size, size, 3), np.uint8))}
    for tower, out in outputs.items():
        if out.shape != (1, encoder.embed_dim) or not np.isfinite(out).all():
            raise DGLError(f"the {tower} encoder of {encoder.describe()} returned {out.shape} (expected finite "
                           f"(1, {encoder.embed_dim})): the model is broken")


@dataclass
class SearchService:
    """The loaded and verified model + index, the encoder queue and the decoders: what the HTTP routes call."""

    encoder: Encoder
    index: SearchIndex
    settings: ServeSettings
    index_kind: str

    def __post_init__(self) -> None:
        check_encoder(self.index.store, self.encoder)
        verify_encoder(self.encoder)
        self._encoder_queue = EncoderQueue()
        self._decoders = DecoderPool(self.settings.decoders)

    async def search_text(self, text: str, k: int) -> dict[str, Any]:
        if not text.strip():
            raise DGLError("query text is empty")
        vectors = await self._encode(TEXT, lambda: self.encoder.encode_text([text]))
        return await self._search(text, vectors, k)

    async def search_video(self, upload: BinaryIO, name: str, k: int) -> dict[str, Any]:
        """Decode the upload in a decoder process (not holding the encoder), then encode and search."""
        frames = await asyncio.wrap_future(self._decoders.submit(lambda decoder: self._decode(decoder, upload, name)))
        vectors = await self._encode(VIDEO, lambda: self.encoder.encode_videos(frames[None]))
        return await self._search(f"video:{name}", vectors, k)

    def _decode(self, decoder: "DecodeProcess", upload: BinaryIO, name: str) -> np.ndarray:
        with _saved_upload(upload, name) as path:
            return decoder.decode(path, self.encoder.frames, self.encoder.image_size,
                                  timeout=self.settings.decode_timeout)

    async def _encode(self, priority: int, job: Callable[[], np.ndarray]) -> np.ndarray:
        return await asyncio.wrap_future(self._encoder_queue.submit(priority, job))

    async def _search(self, query: str, vectors: np.ndarray, k: int) -> dict[str, Any]:
        hits = await asyncio.to_thread(self.index.search, vectors, k)
        return hits_to_dicts([query], hits)[0]

    def health(self) -> dict[str, Any]:
        store = self.index.store
        return {"status": "ok", "backend": self.encoder.describe(), "model_fingerprint": self.encoder.fingerprint,
                "rows": int(store.vectors.shape[0]), "embed_dim": int(store.vectors.shape[1]),
                "index": self.index_kind}

    def close(self) -> None:
        self._encoder_queue.close()
        self._decoders.close()


def open_service(model: str | Path, index: str | Path, settings: ServeSettings = ServeSettings(), *,
                 backend: str = "auto", device: str = "auto", precision: str = "auto", nprobe: int | None = None,
                 ef_search: int | None = None) -> SearchService:
    """Open the index and the encoder (checked to be the model that made the index, and run once)."""
    from dgl_deploy.runtime.backends.select import open_encoder

    searchable = open_index(index, nprobe=nprobe, ef_search=ef_search)
    kind = searchable.settings.kind if isinstance(searchable, AnnIndex) else "exact"
    return SearchService(open_encoder(model, backend=backend, device=device, precision=precision), searchable, settings, kind)


def create_app(model: str | Path, index: str | Path, settings: ServeSettings = ServeSettings(), *,
               backend: str = "auto", device: str = "auto", precision: str = "auto", nprobe: int | None = None,
               ef_search: int | None = None) -> Any:
    """The FastAPI app serving `model` over `index` (see the module docstring)."""
    service = open_service(model, index, settings, backend=backend, device=device, precision=precision, nprobe=nprobe,
                           ef_search=ef_search)
    return build_app(service)


class BodyTimeout(Exception):
    """The request body did not arrive within `body_timeout`."""


ErrorResponse = Callable[..., Any]  # (status, message, headers=None) -> an ASGI response


class RequestGuard:
    """ASGI middleware in front of the search routes: Content-Length bounds (411/413), at most `max_pending`
    requests in progress (503 + Retry-After), and a deadline for receiving the request body (408)."""

    def __init__(self, app: Any, settings: ServeSettings, error: ErrorResponse) -> None:
        self.app, self.settings, self.error = app, settings, error
        self.pending = 0  # touched only on the event loop: no lock

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(SEARCH_PATHS):
            return await self.app(scope, receive, send)
        refusal = self._refusal(scope)
        if refusal is not None:
            return await refusal(scope, receive, send)
        self.pending += 1
        try:
            await self._with_body_deadline(scope, receive, send)
        finally:
            self.pending -= 1

    def _refusal(self, scope: dict) -> Any:
        """The response refusing this request before its body is read, or None to admit it."""
        settings, close = self.settings, {"connection": "close"}  # an unread upload is not read any further
        if scope["method"] == "POST":
            length = dict(scope["headers"]).get(b"content-length", b"").decode("latin-1")
            if not length.isdigit():
                return self.error(411, "a Content-Length header is required", close)
            if int(length) > settings.max_upload_mb * 2**20:
                return self.error(413, f"upload of {int(length) / 2**20:.1f} MB exceeds {settings.max_upload_mb:g} MB",
                                  close)
        if self.pending >= settings.max_pending:
            retry = {"retry-after": "1", **(close if scope["method"] == "POST" else {})}
            return self.error(503, f"busy: {settings.max_pending} requests in progress, retry later", retry)
        return None

    async def _with_body_deadline(self, scope: dict, receive: Callable, send: Callable) -> None:
        """Run the app; if the body is not complete `body_timeout` seconds after the headers, answer 408 instead."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.body_timeout
        received = expired = False

        async def timed_receive() -> dict:
            nonlocal received, expired
            if received:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), deadline - loop.time())
            except asyncio.TimeoutError:
                expired = True
                raise BodyTimeout from None
            received = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def send_unless_expired(message: dict) -> None:
            if not expired:
                await send(message)

        try:
            await self.app(scope, timed_receive, send_unless_expired)
        except BodyTimeout:
            pass
        if expired:
            response = self.error(408, f"request body not received within {self.settings.body_timeout:g} s",
                                  {"connection": "close"})
            await response(scope, receive, send)


def build_app(service: SearchService) -> Any:
    """The routes, limits and error mapping around an opened service."""
    try:
        from fastapi import FastAPI, File, Query, Request, UploadFile
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse
        from starlette.exceptions import HTTPException
    except ImportError:
        raise DGLError(INSTALL_HINT) from None
    from dgl_deploy.data.video import VideoError

    settings = service.settings

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @asynccontextmanager
    async def lifespan(_: Any) -> Any:
        yield
        service.close()

    app = FastAPI(title="dgl-deploy search", version="1", lifespan=lifespan)
    app.add_middleware(RequestGuard, settings=settings, error=error)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "body"))
        return error(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(DGLError)
    async def bad_input(_: Request, exc: DGLError) -> JSONResponse:
        return error(400, str(exc))

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> JSONResponse:
        return error(500, f"internal error ({type(exc).__name__})")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return service.health()

    @app.get("/search")
    async def search_text(q: str = Query(..., min_length=1, max_length=settings.max_query_chars),
                          k: int = Query(10, ge=1, le=settings.max_k)) -> dict[str, Any]:
        return await _timed(service.search_text(q, k))

    @app.post("/search/video")
    async def search_video(file: UploadFile = File(...), k: int = Query(10, ge=1, le=settings.max_k)) -> Any:
        name = file.filename or "upload"
        try:
            return await _timed(service.search_video(file.file, name, k))
        except VideoError as exc:
            return error(400, f"{name}: {exc.reason}")

    return app


async def _timed(search: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    started = time.perf_counter()
    result = await search
    return {**result, "took_ms": round((time.perf_counter() - started) * 1000, 2)}


@contextmanager
def _saved_upload(upload: BinaryIO, name: str) -> Iterator[Path]:
    """The uploaded file as a temp file (keeping a known video extension, for the decoder), removed after."""
    suffix = Path(name).suffix.lower()
    handle, tmp = tempfile.mkstemp(prefix="dgl-upload-", suffix=suffix if suffix in VIDEO_EXTENSIONS else ".bin")
    try:
        with os.fdopen(handle, "wb") as out:
            while chunk := upload.read(1 << 20):
                out.write(chunk)
        yield Path(tmp)
    finally:
        os.remove(tmp)


__all__ = ["ServeSettings", "SearchService", "LIMITS", "open_service", "create_app", "build_app", "verify_encoder"]
