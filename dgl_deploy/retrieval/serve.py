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

The modules: `serve_service` (the opened model and index, the settings, the searches), `serve_routes` (the FastAPI
app and its routes), `serve_guards` (token, Host check, request limits, security headers), `serve_workers` (the
encoder queue, the decoder pools, uploads), `serve_media` (which files are served; posters and previews) and
`serve_metrics` (/metrics). This module opens a service and builds the app around it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dgl_deploy.errors import DGLError
from dgl_deploy.extras import missing_hint
from dgl_deploy.retrieval.ann_index import open_index
from dgl_deploy.retrieval.follow import IndexFollower
from dgl_deploy.retrieval.serve_guards import check_hosts, check_token
from dgl_deploy.retrieval.serve_service import LIMITS, SearchService, ServeSettings


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
    try:
        from dgl_deploy.retrieval.serve_routes import build_app
    except ImportError as exc:
        raise DGLError(missing_hint(exc, "fastapi")) from None
    service = open_service(model, index, settings, backend=backend, device=device, precision=precision, nprobe=nprobe,
                           ef_search=ef_search, poster_cache=poster_cache)
    return build_app(service, token=token, allowed_hosts=allowed_hosts)


__all__ = ["ServeSettings", "SearchService", "LIMITS", "open_service", "create_app", "check_token", "check_hosts"]
