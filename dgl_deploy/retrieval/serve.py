"""`dgl serve`: a small HTTP search service (FastAPI) over one model and one index.

The encoder and the index (an embeddings .npy searched exactly, or a `dgl index build` folder) are
opened when the app is created; the model must be the one that made the embeddings, and each of
its towers is run once: an export whose files were changed (checksums, graph identity, shapes) refuses
to start instead of answering every search with an error. The index is followed (`follow`): a new generation
of the set (`dgl embed --update`, `--prune`) or a rebuilt index folder is served within `reload_interval`
seconds, opened and checked off the request path and switched in whole; a request never sees half of one.

  GET  /                             the search page (static HTML/CSS/JS in retrieval/static/, no data in it)
  GET  /health                        model, backend, rows, index kind, the set's generation
  GET  /metrics                       Prometheus text format (`serve_metrics`): requests by route and status,
                                      latency histograms, encoder queue depth, shed requests, rows and generation
                                      served, decoder restarts
  GET  /search?q=TEXT&k=10&per_video=N text -> videos (a segmented set: moments after NMS, at most N per video, default 0 = no limit)
  POST /search/video?k=10 (file=...)  uploaded video -> videos (multipart form field `file`)
  GET  /search/similar?id=ID&row=R&k=10  an indexed video (or moment: its row) -> other videos, from the stored
                                      row vector (nothing decoded); the query row itself is left out
  GET  /video?id=ID                   the indexed video's file, with HTTP ranges (206) for seeking
  GET  /poster?id=ID&start=S          JPEG poster: a representative frame of the moment (made once, cached)
  GET  /preview?id=ID&start=S         H.264 MP4 of the moment from its start, for files a browser cannot play
                                      (AVI, WMV, HEVC...; made once with PyAV, cached beside the posters)
  GET  /docs, /openapi.json           the API's OpenAPI description

Results carry `start`/`end` seconds for a segmented set's moments. Media are served only from the folder each
video was embedded from, by id, never by path, as video/image types only (`serve_media`). Every answer carries
`X-Content-Type-Options: nosniff` and a Content-Security-Policy (the page: its own files only; anything else:
nothing may run). With a `token`, every request but the page's static files and the API description needs it:
`Authorization: Bearer TOKEN`, or `?token=TOKEN` (for <video>/<img> sources); a missing or wrong token is 401.
Without one, only requests whose Host header names the served address are answered (DNS rebinding): a loopback
name, the address the connection came in on, or one of `allowed_hosts` (`dgl serve --allowed-host`); else 400.

Every error, from bad input to an unknown path, is a 4xx/5xx with the body {"error": "..."}.
Bounds: query length, 1 <= k <= max_k, upload size (Content-Length required, checked before the body is
read: 411/413), the time to receive a request body (`body_timeout`: 408), decode time (`decode_timeout`).
At most `max_pending` search requests are in progress at once (being received, decoded, or waiting for
the encoder); more get 503 with a Retry-After header at once (a refused upload's body is read and dropped
first, so that the client sees the 503 rather than a connection reset).

Concurrency: the routes are async. Uploads are decoded by a pool of `decoders` decoder processes, outside
the encoder; the encoder runs one call at a time on its own thread (backends are not assumed thread-safe),
text queries before queued videos, so text latency stays low while uploads decode. Index searches run on
worker threads, concurrently.
"""

import asyncio  # no `from __future__ import annotations`: FastAPI reads the routes' annotations at runtime
import base64
import copy
import hashlib
import hmac
import itertools
import logging
import os
import queue
import re
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import parse_qs

import numpy as np

from dgl_deploy.data.discover import VIDEO_EXTENSIONS
from dgl_deploy.errors import DGLError
from dgl_deploy.extras import missing_hint
from dgl_deploy.limits import check_number
from dgl_deploy.retrieval.ann_index import SearchIndex, open_index
from dgl_deploy.retrieval.follow import IndexFollower
from dgl_deploy.retrieval.query import check_encoder, hits_to_dicts, search_moments
from dgl_deploy.retrieval.search import Hit
from dgl_deploy.retrieval.serve_media import (
    POSTER_DECODERS,
    IndexedVideos,
    MediaError,
    Posters,
    Previews,
    default_poster_cache,
    media_type,
)
from dgl_deploy.runtime.backends.base import Encoder

if TYPE_CHECKING:  # PyAV is imported when a service starts, not with the CLI
    from dgl_deploy.data.video import DecodeProcess

SEARCH_PATHS = "/search"  # the bounded routes (prefix); /health is never refused
STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8",
                "icon.svg": "image/svg+xml"}
# the page: its own scripts, styles, images and media only; no inline code, no framing, no referrer (media URLs
# may carry the token)
PAGE_HEADERS = {"content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                "media-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
                "x-content-type-options": "nosniff", "referrer-policy": "no-referrer", "cache-control": "no-cache"}
# every other answer (JSON, media): nothing in it may run, be framed or be sniffed as another type
ANSWER_HEADERS = {"content-security-policy": "default-src 'none'; base-uri 'none'; form-action 'none'; "
                  "frame-ancestors 'none'; sandbox", "x-content-type-options": "nosniff", "referrer-policy": "no-referrer"}
DOCS_CDN = "https://cdn.jsdelivr.net"  # where FastAPI's /docs page loads Swagger UI from
PUBLIC_PATHS = frozenset({"/", "/docs", "/openapi.json",
                          *(f"/static/{name}" for name in STATIC_FILES)})  # no index data: no token needed
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")  # the Host names a server without a token always answers
TEXT, VIDEO, STOP = 0, 1, 2  # encoder queue priorities: text first

# (min, max) of each setting; the CLI options carry the same bounds
LIMITS: dict[str, tuple[float, float]] = {
    "max_upload_mb": (0.001, 4096.0), "max_query_chars": (1, 100_000), "max_k": (1, 100_000),
    "decode_timeout": (0.001, 86400.0), "max_pending": (1, 100_000), "decoders": (1, 64),
    "body_timeout": (0.001, 86400.0), "reload_interval": (0.0, 3600.0),
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
    reload_interval: float = 1.0  # seconds between checks for a new generation of the index (0: never)

    def __post_init__(self) -> None:
        for setting in fields(self):
            check_number(setting.name, getattr(self, setting.name), *LIMITS[setting.name], setting.type)


class EncoderQueue:
    """One thread runs every encoder call, in priority order (TEXT before VIDEO), first come first served within."""

    def __init__(self) -> None:
        self._jobs: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        threading.Thread(target=self._work, name="dgl-serve-encoder", daemon=True).start()

    def depth(self) -> int:
        """Calls waiting for the encoder (not counting the one running)."""
        return self._jobs.qsize()

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

        pool = self
        self.restarts = 0  # decoder processes stopped after a hang or crash (the next job starts a new one)
        self._closing = False
        self._count = threading.Lock()

        class CountedDecodeProcess(DecodeProcess):
            """A decoder process whose stops, other than the pool's close, count as restarts."""

            def stop(self) -> int | None:
                code = super().stop()
                if code is not None and not pool._closing:
                    with pool._count:
                        pool.restarts += 1
                return code

        self._decoders = [CountedDecodeProcess() for _ in range(size)]
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
        self._closing = True
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
    """The loaded and verified model + the followed index, the encoder queue and the decoders: what the HTTP routes
    call. A request reads `follower.current` once (`index`, `videos`) and keeps that state to its end."""

    encoder: Encoder
    follower: IndexFollower  # the served index, opened; followed from here on (`settings.reload_interval`)
    settings: ServeSettings
    poster_cache: Path | None = None  # None: default_poster_cache(the embeddings)
    posters: Posters = field(init=False)
    previews: Previews = field(init=False)

    def __post_init__(self) -> None:
        store = self.index.store
        check_encoder(store, self.encoder)
        verify_encoder(self.encoder)
        cache = self.poster_cache or default_poster_cache(store.paths.emb)
        self._poster_decoders = DecoderPool(POSTER_DECODERS)  # posters and previews share it
        self.posters = Posters(lambda: self.videos, cache, self._poster_decoders,
                               decode_timeout=self.settings.decode_timeout, max_pending=self.settings.max_pending)
        self.previews = Previews(lambda: self.videos, cache, self._poster_decoders,
                                 decode_timeout=self.settings.decode_timeout, max_pending=self.settings.max_pending)
        self._encoder_queue = EncoderQueue()
        self._decoders = DecoderPool(self.settings.decoders)
        self.follower.start(lambda index: check_encoder(index.store, self.encoder), self.settings.reload_interval)

    @property
    def index(self) -> SearchIndex:
        """The index served now."""
        return self.follower.current.index

    @property
    def videos(self) -> IndexedVideos:
        """The videos and moments of the index served now."""
        return self.follower.current.videos

    @property
    def decoder_restarts(self) -> int:
        """Decoder processes (uploads and posters) restarted after a hang or crash since start-up."""
        return self._decoders.restarts + self._poster_decoders.restarts

    @property
    def encoder_queue_depth(self) -> int:
        return self._encoder_queue.depth()

    async def search_text(self, text: str, k: int, per_video: int = 0) -> dict[str, Any]:
        if not text.strip():
            raise DGLError("query text is empty")
        vectors = await self._encode(TEXT, lambda: self.encoder.encode_text([text]))
        return await self._search(text, vectors, k, per_video)

    async def search_video(self, upload: BinaryIO, name: str, k: int, per_video: int = 0) -> dict[str, Any]:
        """Decode the upload in a decoder process (not holding the encoder), then encode and search."""
        frames = await asyncio.wrap_future(self._decoders.submit(lambda decoder: self._decode(decoder, upload, name)))
        vectors = await self._encode(VIDEO, lambda: self.encoder.encode_videos(frames[None]))
        return await self._search(f"video:{name}", vectors, k, per_video)

    def _decode(self, decoder: "DecodeProcess", upload: BinaryIO, name: str) -> np.ndarray:
        with _saved_upload(upload, name) as path:
            return decoder.decode(path, self.encoder.frames, self.encoder.image_size,
                                  timeout=self.settings.decode_timeout, sampling=self.encoder.frame_sampling)

    async def _encode(self, priority: int, job: Callable[[], np.ndarray]) -> np.ndarray:
        return await asyncio.wrap_future(self._encoder_queue.submit(priority, job))

    async def search_similar(self, video_id: str, row: int | None, k: int,
                             per_video: int = 0) -> dict[str, Any]:
        """Other videos like an indexed one (its row vector: nothing decoded or encoded); the video itself is
        left out (each of its rows, at most `per_video` of them, could rank: k + that many are fetched)."""
        served = self.follower.current  # the row and the search from one state
        row = await asyncio.to_thread(served.videos.row_of, video_id, row)
        own = served.videos.rows_of(video_id)
        store = served.index.store
        vector = np.asarray(store.vectors[row:row + 1], dtype=np.float32)  # (1, E)
        fetch = k + (min(own, per_video) if per_video else own)
        hits = (await asyncio.to_thread(search_moments, served.index, vector, fetch, per_video))[0]
        others = [replace(hit, rank=rank) for rank, hit in enumerate((h for h in hits if h.id != video_id), 1)]
        spans = getattr(store, "spans", None)
        start = float(spans[row, 0]) if spans is not None else None
        label = f"similar:{video_id}" + (f"@{start:g}" if start is not None else "")
        return self._results(label, others[:k])

    async def _search(self, query: str, vectors: np.ndarray, k: int, per_video: int) -> dict[str, Any]:
        """Top-k hits (a segmented set's moments after NMS; at most `per_video` per video, 0: no limit)."""
        hits = await asyncio.to_thread(search_moments, self.index, vectors, k, per_video)
        return self._results(query, hits[0])

    def _results(self, query: str, hits: list[Hit]) -> dict[str, Any]:
        """The JSON result; each hit of a segmented set has its moment's `start`/`end` seconds."""
        return hits_to_dicts([query], [hits])[0]

    def health(self) -> dict[str, Any]:
        served = self.follower.current
        return {"status": "ok", "backend": self.encoder.describe(), "model_fingerprint": self.encoder.fingerprint,
                "rows": served.rows, "embed_dim": int(served.index.store.vectors.shape[1]), "index": served.kind,
                "generation": served.generation}

    def close(self) -> None:
        self.follower.close()
        self._encoder_queue.close()
        self._decoders.close()
        self.posters.close()


def open_service(model: str | Path, index: str | Path, settings: ServeSettings = ServeSettings(), *,
                 backend: str = "auto", device: str = "auto", precision: str = "auto", nprobe: int | None = None,
                 ef_search: int | None = None, poster_cache: str | Path | None = None) -> SearchService:
    """Open the index and the encoder (checked to be the model that made the index, and run once)."""
    from dgl_deploy.runtime.backends.select import open_encoder

    follower = IndexFollower(index, lambda: open_index(index, nprobe=nprobe, ef_search=ef_search))
    encoder = open_encoder(model, backend=backend, device=device, precision=precision)
    return SearchService(encoder, follower, settings, Path(poster_cache) if poster_cache else None)


def create_app(model: str | Path, index: str | Path, settings: ServeSettings = ServeSettings(), *,
               backend: str = "auto", device: str = "auto", precision: str = "auto", nprobe: int | None = None,
               ef_search: int | None = None, token: str | None = None,
               poster_cache: str | Path | None = None, allowed_hosts: Sequence[str] = ()) -> Any:
    """The FastAPI app serving `model` over `index` (see the module docstring); `token`: required on requests;
    `allowed_hosts`: Host names answered without a token besides the loopback names (the bound host, ...)."""
    check_token(token)
    check_hosts(allowed_hosts)
    service = open_service(model, index, settings, backend=backend, device=device, precision=precision, nprobe=nprobe,
                           ef_search=ef_search, poster_cache=poster_cache)
    return build_app(service, token=token, allowed_hosts=allowed_hosts)


def check_token(token: str | None) -> None:
    """Refuse an empty token or one that cannot travel in a header (DGLError)."""
    if token is not None and not re.fullmatch(r"[\x21-\x7e]{1,4096}", token):
        raise DGLError("the token must be 1-4096 printable ASCII characters without spaces")


def host_name(value: str) -> str:
    """The host of a Host header or an address: lower case, without port or trailing dot, IPv6 in brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[:value.index("]") + 1] if "]" in value else value
    if value.count(":") > 1:  # a bare IPv6 address
        return f"[{value}]"
    return value.partition(":")[0].rstrip(".")


def check_hosts(hosts: Sequence[str]) -> frozenset[str]:
    """The host names of `hosts` (names or addresses, optionally with a port); DGLError for one that is not."""
    names = {host_name(host) for host in hosts}
    bad = sorted(name for name in names if not re.fullmatch(r"[a-z0-9_.-]{1,253}|\[[0-9a-f:.]{2,45}\]", name))
    if bad:
        raise DGLError(f"not a host name or address: {bad[0]!r} (--allowed-host takes a name such as "
                       "search.example.org or an address)")
    return frozenset(names)


class HostGuard:
    """ASGI middleware of a server without a token: a request is answered only if its Host header names the served
    address (a loopback name, the address the connection came in on, or `hosts`); else 400. A page of another site
    whose name was made to resolve to this address (DNS rebinding) sends its own name, and is refused."""

    def __init__(self, app: Any, hosts: frozenset[str], error: "ErrorResponse") -> None:
        self.app, self.error = app, error
        self.hosts = hosts | set(LOOPBACK_HOSTS)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = next((value.decode("latin-1") for name, value in scope["headers"] if name == b"host"), None)
        server = scope.get("server")
        served = self.hosts | ({host_name(str(server[0]))} if server else set())
        if given is not None and host_name(given) in served:
            return await self.app(scope, receive, send)
        shown = repr(given[:100]) if given is not None else "(none)"
        await self.error(400, f"Host {shown} is not an address of this server (a server without a token answers "
                              "only its own addresses: start it with --allowed-host NAME, or --token)",
                         {"connection": "close"} if scope["method"] == "POST" else None)(scope, receive, send)


class AnswerHeaders:
    """ASGI middleware: every answer carries ANSWER_HEADERS, except those a route set itself (the page's policy)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.headers = [(name.encode(), value.encode()) for name, value in ANSWER_HEADERS.items()]

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                message = {**message, "headers": headers + [h for h in self.headers if h[0] not in present]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def docs_headers(html: bytes) -> dict[str, str]:
    """The /docs page's headers: PAGE_HEADERS with a policy allowing Swagger UI from DOCS_CDN and the page's own
    inline scripts (by hash), nothing else."""
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'"
                      for script in re.findall(rb"<script>(.*?)</script>", html, re.S))
    return {**PAGE_HEADERS, "content-security-policy": f"default-src 'none'; script-src {DOCS_CDN} {hashes}; "
            f"style-src {DOCS_CDN}; img-src 'self' data: https://fastapi.tiangolo.com; connect-src 'self'; "
            "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"}


class TokenGuard:
    """ASGI middleware: every request but PUBLIC_PATHS needs `token`, as `Authorization: Bearer TOKEN` or a `token`
    query parameter (for <video>/<img> sources); else 401."""

    def __init__(self, app: Any, token: str, error: "ErrorResponse") -> None:
        self.app, self.error = app, error
        self.token = token.encode()

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            return await self.app(scope, receive, send)
        given = self._given(scope)
        if given is not None and hmac.compare_digest(given.encode("utf-8", "replace"), self.token):
            return await self.app(scope, receive, send)
        headers = {"www-authenticate": "Bearer", **({"connection": "close"} if scope["method"] == "POST" else {})}
        message = "wrong token" if given is not None else \
            "this server needs a token: send 'Authorization: Bearer TOKEN' (or ?token=TOKEN)"
        await self.error(401, message, headers)(scope, receive, send)

    @staticmethod
    def _given(scope: dict) -> str | None:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer":
                    return credentials.strip()
        values = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
        return values[-1] if values else None


class RedactTokens(logging.Filter):
    """Hide `token=...` query values in uvicorn's access log lines."""

    PATTERN = re.compile(r"([?&]token=)[^&\s]*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self.PATTERN.sub(r"\1***", arg) if isinstance(arg, str) else arg
                                for arg in record.args)
        return True


def log_config() -> dict[str, Any]:
    """uvicorn's logging configuration, with tokens redacted from the access log and dgl_deploy's own lines shown
    (the index switches)."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_tokens"] = {"()": RedactTokens}
    config["handlers"]["access"]["filters"] = ["redact_tokens"]
    config["loggers"]["dgl_deploy"] = {"handlers": ["default"], "level": "INFO", "propagate": False}  # e.g. switches
    return config


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
            if refusal.status_code == 503 and scope["method"] == "POST":
                await self._discard_body(scope, receive)
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

    async def _discard_body(self, scope: dict, receive: Callable) -> None:
        """Read and drop a shed upload's body (its size is already checked; at most `body_timeout` seconds), so the
        connection closes after the 503 without unread data: else the client, still sending, sees a reset."""
        if b"100-continue" in dict(scope["headers"]).get(b"expect", b"").lower():
            return  # the client waits for a go-ahead before sending: nothing to drop

        async def drop() -> None:
            while (message := await receive())["type"] == "http.request" and message.get("more_body", False):
                pass

        try:
            await asyncio.wait_for(drop(), self.settings.body_timeout)
        except asyncio.TimeoutError:
            pass

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


def build_app(service: SearchService, token: str | None = None, allowed_hosts: Sequence[str] = ()) -> Any:
    """The routes, limits, token (or Host) check, security headers and error mapping around an opened service."""
    try:
        from fastapi import Depends, FastAPI, File, Query, Request, UploadFile
        from fastapi.exceptions import RequestValidationError
        from fastapi.openapi.docs import get_swagger_ui_html
        from fastapi.responses import FileResponse, JSONResponse, Response
        from fastapi.security import HTTPBearer
        from starlette.exceptions import HTTPException
        from starlette.responses import MalformedRangeHeader, RangeNotSatisfiable

        from dgl_deploy.retrieval.serve_metrics import RequestMetrics, ServeMetrics
    except ImportError as exc:
        raise DGLError(missing_hint(exc, "fastapi")) from None
    check_token(token)
    hosts = check_hosts(allowed_hosts)
    from dgl_deploy.data.video import VideoError

    settings = service.settings

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @asynccontextmanager
    async def lifespan(_: Any) -> Any:
        yield
        service.close()

    static = resources.files("dgl_deploy.retrieval") / "static"
    page = {name: (static / name).read_bytes() for name in ("index.html", *STATIC_FILES)}
    # with a token, /docs offers an "Authorize" button (the check itself is TokenGuard's)
    bearer = [Depends(HTTPBearer(auto_error=False))] if token else []
    app = FastAPI(title="dgl-deploy search", version="1", lifespan=lifespan, dependencies=bearer, docs_url=None,
                  redoc_url=None)
    app.state.service = service
    app.add_middleware(RequestGuard, settings=settings, error=error)
    if token:
        app.add_middleware(TokenGuard, token=token, error=error)  # refused before counting as pending
    else:
        app.add_middleware(HostGuard, hosts=hosts, error=error)
    app.add_middleware(AnswerHeaders)  # on every answer, refusals included
    metrics = ServeMetrics(service)
    app.add_middleware(RequestMetrics, metrics=metrics,  # outermost: every request counted, refusals included
                       routes=lambda: {getattr(route, "path", "") for route in app.routes})
    docs = get_swagger_ui_html(openapi_url=app.openapi_url, title=f"{app.title} - Swagger UI").body

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

    @app.exception_handler(MediaError)
    async def media_refused(_: Request, exc: MediaError) -> JSONResponse:
        return error(exc.status, str(exc), {"retry-after": "1"} if exc.status == 503 else None)

    @app.exception_handler(Exception)
    async def internal(_: Request, exc: Exception) -> JSONResponse:
        return error(500, f"internal error ({type(exc).__name__})")

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

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return service.health()

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        body, content_type = metrics.render()
        return Response(body, headers={"content-type": content_type})

    per_video_query = Query(0, ge=0, le=settings.max_k, description="moments per video (default 0 = no limit; a "
                            "segmented set's moments are merged by temporal NMS)")

    @app.get("/search")
    async def search_text(q: str = Query(..., min_length=1, max_length=settings.max_query_chars),
                          k: int = Query(10, ge=1, le=settings.max_k),
                          per_video: int = per_video_query) -> dict[str, Any]:
        return await _timed(service.search_text(q, k, per_video))

    @app.post("/search/video")
    async def search_video(file: UploadFile = File(...), k: int = Query(10, ge=1, le=settings.max_k),
                           per_video: int = per_video_query) -> Any:
        name = file.filename or "upload"
        try:
            return await _timed(service.search_video(file.file, name, k, per_video))
        except VideoError as exc:
            return error(400, f"{name}: {exc.reason}")

    @app.get("/search/similar")
    async def search_similar(id: str = Query(..., min_length=1, max_length=4096),
                             row: int | None = Query(None, ge=0, description="the moment's row (default: the first)"),
                             k: int = Query(10, ge=1, le=settings.max_k),
                             per_video: int = per_video_query) -> dict[str, Any]:
        return await _timed(service.search_similar(id, row, k, per_video))

    @app.head("/video", include_in_schema=False)
    @app.get("/video")
    async def video(id: str = Query(..., min_length=1, max_length=4096)) -> Any:
        """The indexed video `id` (as recorded in the index), with HTTP range requests (206) for seeking."""
        path = await asyncio.to_thread(service.videos.resolve, id)
        return MediaFile(path, media_type=media_type(path), headers={"cache-control": "private, max-age=3600"})

    @app.get("/poster", response_class=FileResponse)
    async def poster(id: str = Query(..., min_length=1, max_length=4096),
                     start: float = Query(0.0, ge=0, le=1e9, description="the moment's start, seconds")) -> Any:
        """JPEG frame of video `id` at `start` (0, or a moment start of a segmented set)."""
        path = await service.posters.get(id, start)
        return MediaFile(path, media_type="image/jpeg", headers={"cache-control": "private, max-age=3600"})

    @app.head("/preview", include_in_schema=False)
    @app.get("/preview")
    async def preview(id: str = Query(..., min_length=1, max_length=4096),
                      start: float = Query(0.0, ge=0, le=1e9, description="the moment's start, seconds")) -> Any:
        """A short H.264 MP4 of the moment of `id` at `start` (time 0 = the moment's start), for files a browser
        cannot play (made once, cached beside the posters; `data.preview` bounds its length and size)."""
        path = await service.previews.get(id, start)
        return MediaFile(path, media_type="video/mp4", headers={"cache-control": "private, max-age=3600"})

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


__all__ = ["ServeSettings", "SearchService", "LIMITS", "open_service", "create_app", "build_app", "verify_encoder",
           "check_token", "check_hosts", "log_config", "RedactTokens"]
