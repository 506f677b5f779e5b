"""What `dgl serve`'s routes call: the opened model and the followed index, the limits of the service, and the
searches (text, uploaded video, an indexed video's row) as JSON-ready results.

The model must be the one that made the embeddings, and each of its towers is run once at start-up
(`verify_encoder`): an export whose files were changed (checksums, graph identity, shapes) refuses to start instead
of answering every search with an error. The encoder runs on the encoder queue, uploads are decoded by a decoder
pool and posters/previews by another (`serve_workers`); index searches run on worker threads, concurrently.

Torch-free, and imports no web framework: the routes (`serve_routes`) are built around an opened service.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, get_type_hints

import numpy as np

from dgl_deploy.errors import DGLError
from dgl_deploy.limits import check_number
from dgl_deploy.retrieval.ann_index import SearchIndex
from dgl_deploy.retrieval.follow import IndexFollower
from dgl_deploy.retrieval.moments import search_moments
from dgl_deploy.retrieval.query import check_encoder, hits_to_dicts
from dgl_deploy.retrieval.search import Hit
from dgl_deploy.retrieval.serve_media import POSTER_DECODERS, IndexedVideos, Posters, Previews, default_poster_cache
from dgl_deploy.retrieval.serve_workers import TEXT, VIDEO, DecoderPool, EncoderQueue, saved_upload
from dgl_deploy.runtime.backends.base import Encoder

if TYPE_CHECKING:  # PyAV is imported when a service starts, not with the CLI
    from dgl_deploy.data.video import DecodeProcess

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
        kinds = get_type_hints(type(self))  # int or float (the annotations are strings here)
        for setting in fields(self):
            check_number(setting.name, getattr(self, setting.name), *LIMITS[setting.name], kinds[setting.name])


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

    encoder: Encoder  # the model that made the index (checked), verified at start-up
    follower: IndexFollower  # the served index, opened; followed from here on (`settings.reload_interval`)
    settings: ServeSettings  # the limits
    poster_cache: Path | None = None  # None: default_poster_cache(the embeddings)
    posters: Posters = field(init=False)  # poster frames of the moments, made on first request
    previews: Previews = field(init=False)  # H.264 previews of the moments, made on first request

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
        """Encoder calls waiting (text queries and decoded uploads)."""
        return self._encoder_queue.depth()

    async def search_text(self, text: str, k: int, per_video: int = 0) -> dict[str, Any]:
        """Encode `text` (ahead of queued videos) and search."""
        if not text.strip():
            raise DGLError("query text is empty")
        vectors = await self._encode(TEXT, lambda: self.encoder.encode_text([text]))
        return await self._search(text, vectors, k, per_video)

    async def search_video(self, upload: BinaryIO, name: str, k: int, per_video: int = 0) -> dict[str, Any]:
        """Decode the upload in a decoder process (not holding the encoder), then encode and search."""
        frames = await asyncio.wrap_future(self._decoders.submit(lambda decoder: self._decode(decoder, upload, name)))
        vectors = await self._encode(VIDEO, lambda: self.encoder.encode_videos(frames[None]))
        return await self._search(f"video:{name}", vectors, k, per_video)

    def _decode(self, decoder: DecodeProcess, upload: BinaryIO, name: str) -> np.ndarray:
        from dgl_deploy.data.frame_request import FrameRequest

        with saved_upload(upload, name) as path:
            request = FrameRequest(path, self.encoder.frames, self.encoder.image_size,
                                   sampling=self.encoder.frame_sampling)
            return decoder.decode(request, timeout=self.settings.decode_timeout)

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
        """/health: the model, backend, rows, index kind and generation served now."""
        served = self.follower.current
        return {"status": "ok", "backend": self.encoder.describe(), "model_fingerprint": self.encoder.fingerprint,
                "rows": served.rows, "embed_dim": int(served.index.store.vectors.shape[1]), "index": served.kind,
                "generation": served.generation}

    def close(self) -> None:
        """Stop following the index and stop the encoder thread and the decoder processes."""
        self.follower.close()
        self._encoder_queue.close()
        self._decoders.close()
        self.posters.close()


__all__ = ["LIMITS", "ServeSettings", "SearchService", "verify_encoder"]
