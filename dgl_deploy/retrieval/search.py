"""Exact cosine search over an embedding set: chunked matrix products over memory-mapped rows, so memory
stays bounded for millions of rows; top-k by argpartition per chunk, merged across chunks. A NaN/inf query
or row is refused (one error line), never turned into NaN scores."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dgl_deploy.errors import DGLError
from dgl_deploy.retrieval.store import EmbeddingStore

CHUNK_ROWS = 131072  # rows scored per step (64 MB of float32 at E = 512 for one chunk)


@dataclass(frozen=True)
class Hit:
    """One search result."""

    rank: int  # 1-based
    score: float  # cosine similarity
    row: int  # row in the embedding set
    id: str  # the video's id (relative path)
    start: float | None = None  # seconds: the row's window of the video (segmented sets); None: the whole video
    end: float | None = None


def make_hit(store: EmbeddingStore, rank: int, score: float, row: int) -> Hit:
    """The hit for `row` of `store`, with its window's times when the set is segmented."""
    return Hit(rank, float(score), int(row), store.ids[row], *store.span(int(row)))


def top_k(vectors: np.ndarray, queries: np.ndarray, k: int, chunk_rows: int = CHUNK_ROWS,
          name: str = "embeddings") -> tuple[np.ndarray, np.ndarray]:
    """Best `k` rows of `vectors` (N, E) for each query (Q, E): (scores (Q, k'), rows (Q, k')), k' = min(k, N).
    A row whose scores are not finite is refused (DGLError naming `name` and the row)."""
    n = vectors.shape[0]
    k = min(k, n)
    best_scores = np.full((queries.shape[0], 0), -np.inf, np.float32)
    best_rows = np.zeros((queries.shape[0], 0), np.int64)
    for start in range(0, n, chunk_rows):
        block = np.asarray(vectors[start:start + chunk_rows], dtype=np.float32)  # (C, E)
        with np.errstate(invalid="ignore", over="ignore"):  # a NaN/inf row: refused just below
            scores = queries @ block.T  # (Q, C)
        bad = np.flatnonzero(~np.isfinite(scores).all(axis=0))
        if bad.size:
            raise DGLError(f"{name}: row {start + int(bad[0])} is NaN/inf (or too large): the set is damaged, "
                           "re-embed it")
        keep = min(k, scores.shape[1])
        part = np.argpartition(-scores, keep - 1, axis=1)[:, :keep]  # (Q, keep)
        best_scores = np.concatenate([best_scores, np.take_along_axis(scores, part, 1)], axis=1)
        best_rows = np.concatenate([best_rows, part + start], axis=1)
        if best_scores.shape[1] > k:
            keep_idx = np.argpartition(-best_scores, k - 1, axis=1)[:, :k]
            best_scores = np.take_along_axis(best_scores, keep_idx, 1)
            best_rows = np.take_along_axis(best_rows, keep_idx, 1)
    order = np.lexsort((best_rows, -best_scores), axis=1)  # score descending, then row ascending
    return np.take_along_axis(best_scores, order, 1), np.take_along_axis(best_rows, order, 1)


def check_queries(store: EmbeddingStore, queries: np.ndarray, k: int) -> None:
    """Refuse k < 1, query vectors of another dimension, and NaN/inf query vectors."""
    if k < 1:
        raise DGLError(f"k must be >= 1, got {k}")
    if queries.ndim != 2 or queries.shape[1] != store.vectors.shape[1]:
        raise DGLError(f"query vectors {queries.shape} do not fit embeddings of dim {store.vectors.shape[1]}")
    if not np.isfinite(queries).all():
        raise DGLError("the encoder returned NaN/inf for the query: cannot search with it")


def search(store: EmbeddingStore, queries: np.ndarray, k: int = 10) -> list[list[Hit]]:
    """Hits for each query vector (Q, E) against the set."""
    check_queries(store, queries, k)
    if store.vectors.shape[0] == 0:
        return [[] for _ in range(queries.shape[0])]
    scores, rows = top_k(store.vectors, queries.astype(np.float32), k, name=str(store.paths.emb))
    return [[make_hit(store, r + 1, s, row) for r, (s, row) in enumerate(zip(qs, qr, strict=False))]
            for qs, qr in zip(scores, rows, strict=False)]
