"""`dgl serve`: a small HTTP search service (FastAPI) over one model and one index.

The encoder and the index (an embeddings .npy searched exactly, or a `dgl index build` folder) are
opened once, when the app is created; the model must be the one that made the embeddings.

  GET  /health                        model, backend, rows, index kind
  GET  /search?q=TEXT&k=10            text -> videos
  POST /search/video?k=10 (file=...)  uploaded video -> videos (multipart form field `file`)

Bounds: query length, 1 <= k <= max_k, upload size (Content-Length required, checked before the body is
read), decode time (the decoder runs in a subprocess with a time limit). Bad input is a 4xx with
{"error": "..."}; more than `max_pending` requests waiting for the encoder get 503. The encoder runs one
call at a time (backends are not assumed thread-safe); searching runs concurrently.
"""

import os  # no `from __future__ import annotations`: FastAPI reads the routes' annotations at runtime
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dgl_deploy.data.discover import VIDEO_EXTENSIONS
from dgl_deploy.errors import DGLError
from dgl_deploy.retrieval.ann_index import AnnIndex, SearchIndex, open_index
from dgl_deploy.retrieval.query import check_encoder, hits_to_dicts
from dgl_deploy.runtime.backends.base import Encoder

INSTALL_HINT = "the HTTP service needs FastAPI and uvicorn: pip install 'dgl-deploy[serve]'"


@dataclass(frozen=True)
class ServeSettings:
    """Limits of the service."""

    max_upload_mb: float = 64.0  # largest accepted video upload
    max_query_chars: int = 1000  # longest accepted query text
    max_k: int = 1000  # most results per query
    decode_timeout: float = 30.0  # seconds allowed to decode one uploaded video
    max_pending: int = 64  # requests waiting for the encoder before new ones get 503


class Busy(Exception):
    """Too many requests are already waiting for the encoder."""


@dataclass
class SearchService:
    """The loaded model + index, the encoder lock and the request bound: what the HTTP routes call."""

    encoder: Encoder
    index: SearchIndex
    settings: ServeSettings
    index_kind: str

    def __post_init__(self) -> None:
        check_encoder(self.index.store, self.encoder)
        self._encoder_lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.settings.max_pending)

    @contextmanager
    def _encoder_turn(self) -> Iterator[None]:
        if not self._slots.acquire(blocking=False):
            raise Busy
        try:
            with self._encoder_lock:
                yield
        finally:
            self._slots.release()

    def search_text(self, text: str, k: int) -> dict[str, Any]:
        if not text.strip():
            raise DGLError("query text is empty")
        with self._encoder_turn():
            vectors = self.encoder.encode_text([text])
        return hits_to_dicts([text], self.index.search(vectors, k))[0]

    def search_video(self, path: Path, name: str, k: int) -> dict[str, Any]:
        from dgl_deploy.data.video import read_frames

        with self._encoder_turn():  # the decoder subprocess is shared too: one video at a time
            frames = read_frames(path, self.encoder.frames, self.encoder.image_size,
                                 timeout=self.settings.decode_timeout)
            vectors = self.encoder.encode_videos(frames[None])
        return hits_to_dicts([f"video:{name}"], self.index.search(vectors, k))[0]

    def health(self) -> dict[str, Any]:
        store = self.index.store
        return {"status": "ok", "backend": self.encoder.describe(), "model_fingerprint": self.encoder.fingerprint,
                "rows": int(store.vectors.shape[0]), "embed_dim": int(store.vectors.shape[1]),
                "index": self.index_kind}


def open_service(model: str | Path, index: str | Path, settings: ServeSettings = ServeSettings(), *,
                 backend: str = "auto", device: str = "auto", precision: str = "auto", nprobe: int | None = None,
                 ef_search: int | None = None) -> SearchService:
    """Open the index and the encoder (checked to be the model that made the index)."""
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


def build_app(service: SearchService) -> Any:
    """The routes, limits and error mapping around an opened service."""
    try:
        from fastapi import FastAPI, File, Query, Request, UploadFile
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import JSONResponse
    except ImportError:
        raise DGLError(INSTALL_HINT) from None

    settings = service.settings
    app = FastAPI(title="dgl-deploy search", version="1")
    max_bytes = int(settings.max_upload_mb * 2**20)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.middleware("http")
    async def bound_uploads(request: Request, call_next: Any) -> Any:
        if request.method == "POST":
            length = request.headers.get("content-length")
            if length is None or not length.isdigit():
                return error(411, "a Content-Length header is required")
            if int(length) > max_bytes:
                return error(413, f"upload of {int(length) / 2**20:.1f} MB exceeds {settings.max_upload_mb:g} MB")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "body"))
        return error(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(DGLError)
    async def bad_input(_: Request, exc: DGLError) -> JSONResponse:
        return error(400, str(exc))

    @app.exception_handler(Busy)
    async def busy(_: Request, __: Busy) -> JSONResponse:
        return error(503, f"busy: more than {settings.max_pending} requests waiting, retry later")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return service.health()

    @app.get("/search")
    def search_text(q: str = Query(..., min_length=1, max_length=settings.max_query_chars),
                    k: int = Query(10, ge=1, le=settings.max_k)) -> dict[str, Any]:
        return _timed(lambda: service.search_text(q, k))

    @app.post("/search/video")
    def search_video(file: UploadFile = File(...), k: int = Query(10, ge=1, le=settings.max_k)) -> Any:
        from dgl_deploy.data.video import VideoError

        name = file.filename or "upload"
        with _saved_upload(file, name) as path:
            try:
                return _timed(lambda: service.search_video(path, name, k))
            except VideoError as exc:
                return error(400, f"{name}: {exc.reason}")

    return app


def _timed(run: Any) -> dict[str, Any]:
    started = time.perf_counter()
    result = run()
    return {**result, "took_ms": round((time.perf_counter() - started) * 1000, 2)}


@contextmanager
def _saved_upload(upload: Any, name: str) -> Iterator[Path]:
    """The uploaded file as a temp file (keeping a known video extension, for the decoder), removed after."""
    suffix = Path(name).suffix.lower()
    handle, tmp = tempfile.mkstemp(prefix="dgl-upload-", suffix=suffix if suffix in VIDEO_EXTENSIONS else ".bin")
    try:
        with os.fdopen(handle, "wb") as out:
            while chunk := upload.file.read(1 << 20):
                out.write(chunk)
        yield Path(tmp)
    finally:
        os.remove(tmp)


__all__ = ["ServeSettings", "SearchService", "open_service", "create_app", "build_app"]
