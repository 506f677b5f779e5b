"""`dgl query`: encode texts (or a video) with the model that made an embedding set and search it
(exactly, or through a FAISS index folder made by `dgl index build`).

Importing this module does not import torch: with an exported (ONNX/TensorRT) model, start-up is the
ONNX session plus a memory map of the embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from dgl_deploy.errors import DGLError
from dgl_deploy.retrieval.ann_index import ExactIndex, SearchIndex, open_index
from dgl_deploy.retrieval.search import Hit
from dgl_deploy.retrieval.store import EmbeddingStore, open_store
from dgl_deploy.runtime.backends.base import Encoder
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
    check_same_model(store.fingerprint, encoder.fingerprint, str(store.paths.emb),
                     fix="re-embed, or query with the model that made it")


def _as_index(index: EmbeddingStore | SearchIndex) -> SearchIndex:
    return ExactIndex(index) if isinstance(index, EmbeddingStore) else index


def query_texts(index: EmbeddingStore | SearchIndex, encoder: Encoder, texts: Sequence[str],
                k: int = 10) -> list[list[Hit]]:
    """Top-k videos for each text."""
    index = _as_index(index)
    check_encoder(index.store, encoder)
    if not texts:
        raise DGLError("no query text given")
    blank = [n for n, text in enumerate(texts, 1) if not text.strip()]
    if blank:
        raise DGLError(f"query text is empty (query {blank[0]} of {len(texts)})")
    return index.search(encoder.encode_text(list(texts)), k)


def query_video(index: EmbeddingStore | SearchIndex, encoder: Encoder, video: Path | str, k: int = 10) -> list[Hit]:
    """Top-k videos most similar to `video` (video -> video)."""
    from dgl_deploy.data.video import read_frames

    index = _as_index(index)
    check_encoder(index.store, encoder)
    frames = read_frames(video, encoder.frames, encoder.image_size)  # (T, H, W, 3)
    return index.search(encoder.encode_videos(frames[None]), k)[0]


def hits_to_dicts(queries: Sequence[str], hits: Sequence[Sequence[Hit]]) -> list[dict]:
    return [{"query": q, "results": [asdict(h) for h in hs]} for q, hs in zip(queries, hits, strict=False)]


def run_query(index: Path | str, texts: Sequence[str], *, model: Path | str | None = None, k: int = 10,
              queries_file: Path | str | None = None, video: Path | str | None = None, backend: str = "auto",
              precision: str = "auto",
              device: str = "auto") -> list[dict]:
    """What `dgl query` does: open the set (an .npy, or an index folder) and the matching encoder, search,
    return JSON-ready results."""
    from dgl_deploy.runtime.backends.select import open_encoder

    searchable = open_index(index)
    queries = list(texts) + (_read_queries(Path(queries_file)) if queries_file else [])
    if bool(queries) == bool(video):
        raise DGLError("give query texts (arguments or --file) or --video, not both / neither")
    encoder = open_encoder(resolve_model(searchable.store, model), backend=backend, device=device,
                           precision=precision)
    if video:
        return hits_to_dicts([f"video:{video}"], [query_video(searchable, encoder, video, k)])
    return hits_to_dicts(queries, query_texts(searchable, encoder, queries, k))


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


__all__ = ["open_store", "resolve_model", "query_texts", "query_video", "hits_to_dicts", "run_query"]
