"""`dgl query`: encode texts (or a video) with the model that made an embedding set and search it
(exactly, or through a FAISS index folder made by `dgl index build`).

In a segmented set (`dgl embed --window`) each hit is a moment, after temporal non-maximum suppression of its
windows (`retrieval.moments`: adjacent windows that all match become one longer moment); `per_video` N keeps the
best N moments of each video (0: no limit).

The query encoder's precision may differ from the rows' (int8 rows queried at fp32, say) only where the
export's parity says both match fp32 (`precision.check_mixing`); `dgl query` names both precisions when they
differ, and a `--video` query samples its frames as the model does (`Encoder.frame_sampling`).

Importing this module does not import torch: with an exported (ONNX/TensorRT) model, start-up is the
ONNX session plus a memory map of the embeddings."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from dgl_deploy.errors import DGLError
from dgl_deploy.retrieval.ann_index import ExactIndex, SearchIndex, open_index
from dgl_deploy.retrieval.moments import search_moments
from dgl_deploy.retrieval.precision import check_mixing, encoder_precision, parity_manifest
from dgl_deploy.retrieval.search import Hit
from dgl_deploy.retrieval.store import EmbeddingStore, open_store
from dgl_deploy.runtime.backends.base import TEXT_BATCH, Encoder
from dgl_deploy.runtime.backends.select import Log
from dgl_deploy.runtime.manifest import check_same_model


def resolve_model(store: EmbeddingStore, model: str | Path | None) -> str:
    """The model to encode queries with: the one given, else the one recorded in the set's manifest (beside the
    set as when embedded, else at its absolute path)."""
    if model is not None:
        return str(model)
    recorded = store.recorded_path("model")
    if recorded is None:
        raise DGLError(f"{store.paths.manifest} does not say which model made it: pass --model")
    if not recorded.exists():
        raise DGLError(f"{recorded}: the model that made {store.paths.emb} is not there any more (moved, or the set "
                       "was copied without it): pass --model with that model")
    return str(recorded)


def check_encoder(store: EmbeddingStore, encoder: Encoder) -> None:
    """Refuse an encoder of another model, or one whose precision does not mix with the rows'
    (`precision.check_mixing`)."""
    check_same_model(store.fingerprint, encoder.fingerprint, str(store.paths.emb),
                     fix="re-embed, or query with the model that made it")
    precision = encoder_precision(encoder)
    if store.precisions - {precision}:
        check_mixing(str(store.paths.emb), store.precisions, precision,
                     parity_manifest(encoder, store.recorded_path("model")),
                     fix=f"query with --precision {' or '.join(sorted(store.precisions))}")


def open_query_encoder(store: EmbeddingStore, model: Path | str | None = None, *, backend: str = "auto",
                       device: str = "auto", precision: str = "auto", strict: bool = False,
                       log: Log | None = None) -> Encoder:
    """The encoder queries of `store` are encoded with: `model` (default: the one that made the set,
    `resolve_model`), opened by `open_encoder` (`log`: where it says which backend it chose) and checked against
    the set (`check_encoder`)."""
    from dgl_deploy.runtime.backends.select import open_encoder  # looked up per call (tests replace it)

    encoder = open_encoder(resolve_model(store, model), backend=backend, device=device, precision=precision,
                           strict=strict, log=log)
    check_encoder(store, encoder)
    return encoder


def _as_index(index: EmbeddingStore | SearchIndex) -> SearchIndex:
    return ExactIndex(index) if isinstance(index, EmbeddingStore) else index


def query_texts(index: EmbeddingStore | SearchIndex, encoder: Encoder, texts: Sequence[str],
                k: int = 10, per_video: int = 0) -> list[list[Hit]]:
    """Top-k videos (moments of a segmented set, after NMS; at most `per_video` per video, 0: no limit) for
    each text."""
    return list(iter_query_texts(index, encoder, texts, k, per_video))


def iter_query_texts(index: EmbeddingStore | SearchIndex, encoder: Encoder, texts: Sequence[str],
                     k: int = 10, per_video: int = 0) -> Iterator[list[Hit]]:
    """`query_texts`, one text's hits at a time: `TEXT_BATCH` texts per encoder call and search, so memory stays
    flat in the number of texts. The encoder and the texts are checked at the call, before the first result."""
    index = _as_index(index)
    check_encoder(index.store, encoder)
    if not texts:
        raise DGLError("no query text given")
    blank = [n for n, text in enumerate(texts, 1) if not text.strip()]
    if blank:
        raise DGLError(f"query text is empty (query {blank[0]} of {len(texts)})")
    return (hits for start in range(0, len(texts), TEXT_BATCH)
            for hits in search_moments(index, encoder.encode_text(list(texts[start:start + TEXT_BATCH])), k, per_video))


def query_video(index: EmbeddingStore | SearchIndex, encoder: Encoder, video: Path | str, k: int = 10,
                per_video: int = 0) -> list[Hit]:
    """Top-k videos (or moments, after NMS) most similar to the whole clip `video` (video -> video)."""
    from dgl_deploy.data.frame_request import FrameRequest
    from dgl_deploy.data.video import read_frames

    index = _as_index(index)
    check_encoder(index.store, encoder)
    frames = read_frames(FrameRequest(video, encoder.frames, encoder.image_size, sampling=encoder.frame_sampling))  # (T, S, S, 3)
    return search_moments(index, encoder.encode_videos(frames[None]), k, per_video)[0]


def query_vector(index: EmbeddingStore | SearchIndex, vector: np.ndarray | Sequence[float], k: int = 10,
                 per_video: int = 0) -> list[Hit]:
    """Top-k videos (or moments, after NMS) for one query vector (E,) of the set's dimension, as given (an
    encoder's rows are L2-normalised: scores are then cosines)."""
    index = _as_index(index)
    try:
        query = np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError):
        raise DGLError(f"a query vector must be numbers, got {type(vector).__name__}") from None
    dim = index.store.vectors.shape[1]
    if query.shape != (dim,):
        raise DGLError(f"a query vector must have shape ({dim},) for this set, got {query.shape}")
    if not np.isfinite(query).all():
        raise DGLError("the query vector holds NaN/inf: cannot search with it")
    return search_moments(index, query[None], k, per_video)[0]


def hits_to_dicts(queries: Sequence[str], hits: Sequence[Sequence[Hit]]) -> list[dict]:
    """JSON-ready results: rank, score, row, id, and start/end (seconds) for the moments of a segmented set."""
    return [{"query": q, "results": [_hit_dict(h) for h in hs]} for q, hs in zip(queries, hits, strict=False)]


def _hit_dict(hit: Hit) -> dict:
    return {key: value for key, value in asdict(hit).items() if value is not None or key not in ("start", "end")}


def run_query(index: Path | str, texts: Sequence[str], **options: Any) -> list[dict]:
    """`stream_query`'s results as a list."""
    return list(stream_query(index, texts, **options))


def stream_query(index: Path | str, texts: Sequence[str], *, model: Path | str | None = None, k: int = 10,
                 queries_file: Path | str | None = None, video: Path | str | None = None, backend: str = "auto",
                 precision: str = "auto", device: str = "auto", per_video: int = 0,
                 strict: bool = False) -> Iterator[dict]:
    """What `dgl query` does: open the set (an .npy, or an index folder) and the matching encoder, search, and
    yield JSON-ready results one query at a time, memory flat in the number of queries (opening and checking happen
    at the call, before the first result; moments after NMS in a segmented set; `per_video` N: the best N of each
    video, 0: no limit). Says on stderr which encoder (and
    precision) it uses and, when the rows were computed at another precision, theirs; `strict`: refuse a forced
    precision whose parity misses on this host (`open_encoder`)."""
    searchable = open_index(index)
    queries = list(texts) + (_read_queries(Path(queries_file)) if queries_file else [])
    if bool(queries) == bool(video):
        raise DGLError("give query texts (arguments or --file) or --video, not both / neither")
    encoder = open_query_encoder(searchable.store, model, backend=backend, device=device, precision=precision,
                                 strict=strict, log=_stderr)
    rows, queries_at = searchable.store.precisions, encoder_precision(encoder)
    if rows - {queries_at}:
        print(f"{searchable.store.paths.emb}: rows at {'/'.join(sorted(rows))}, queries at {queries_at} (both held the "
              "export's parity)", file=sys.stderr)
    if video:
        return iter(hits_to_dicts([f"video:{video}"], [query_video(searchable, encoder, video, k, per_video)]))
    hits = iter_query_texts(searchable, encoder, queries, k, per_video)
    return (hits_to_dicts([query], [found])[0] for query, found in zip(queries, hits, strict=True))


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def _read_queries(path: Path) -> list[str]:
    """One query per non-blank line of a UTF-8 file."""
    if not path.is_file():
        raise DGLError(f"{path}: no such queries file")
    queries = []
    for number, raw in enumerate(path.read_bytes().splitlines(), 1):
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise DGLError(f"{path}: line {number} is not UTF-8 text") from None
        if line:
            queries.append(line)
    return queries


__all__ = ["open_store", "resolve_model", "open_query_encoder", "query_texts", "iter_query_texts", "query_video",
           "query_vector", "hits_to_dicts", "run_query", "stream_query"]
