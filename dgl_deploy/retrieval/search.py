"""Exact cosine search over an embedding set, over the rows as they are stored (float32 or float16,
memory-mapped): nothing converts the whole set per query and memory stays bounded for millions of rows.

The rows are cut into shards, one per CPU (`search_threads`), each searched on its own thread (numpy's loops,
BLAS and FAISS release the GIL). Ties are broken by row number everywhere (`select`), so the result is
exactly "all scores sorted by score descending, then row ascending", whatever the chunk and shard sizes.

Scores (`score_rows`, the one place exact scores are computed): for up to SMALL_BATCH queries, numpy's SIMD
dot loop per query (einsum: twice OpenBLAS's sgemv on one core at E = 512, and no BLAS threads competing
with the shards); for larger batches, BLAS (compute-bound there: one shard, BLAS uses the cores itself).

float32 rows: a shard is scored in chunks of CHUNK_ROWS; each chunk's best k join the shard's running top-k.

float16 rows, with FAISS installed (`dgl-deploy[index]`; few queries, k <= FAISS_MAX_K): FAISS's float16
scanner reads each shard in place (the float16 values exactly, float32 sums, SIMD) and proposes its best 2k;
the candidates are re-scored by `score_rows`, so scores and order are those of the numpy path. Memory-bound,
it reads half the bytes of float32: faster than float32. Without FAISS, float16 chunks are converted and
scored like float32 ones (numpy converts float16 slowly: several times the float32 time).

float32 rows with a float16 scan copy (sets of `store.SCAN_COPY_MIN_ROWS` rows or more), with FAISS: the same
float16 scan over the copy proposes its best 2k + SCAN_SPARE rows per shard, and every row whose float16 score
is within twice the rounding bound (`rounding_bound`) of the k-th best float16 score is re-scored from the
float32 rows. Rounding moves a score by at most that bound, so this holds every row of the exact top k (ties
included): the result equals the float32 scan's, at about half its time. If a shard's proposals end inside the
bound (more near-equal rows than proposed), the query is scored by the float32 scan instead.

A NaN/inf query or row is refused (one error line), never turned into NaN scores. (The FAISS scan proposes
candidates only: a NaN row of a damaged float16 set is refused if it is one, skipped if not; `dgl embed`
never writes such a row.)
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from dgl_deploy.errors import DGLError
from dgl_deploy.retrieval.store import EmbeddingStore, ScanCopy

CHUNK_ROWS = 16384  # rows scored per step and thread (32 MiB of float32 at E = 512)
SMALL_BATCH = 4  # up to this many queries: einsum per query, shards on threads; more: BLAS, one shard
FAISS_MAX_K = 1024  # the FAISS float16 scan keeps 2k candidates per shard and query: beyond this k, numpy scores
SCAN_SPARE = 32  # extra candidates per shard in the scan copy's pass (room for near-ties before a fallback)
Candidates = tuple[np.ndarray, np.ndarray]  # (Q, M) scores, (Q, M) row numbers

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


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


def search_threads() -> int:
    """Threads an exact search uses: the CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def select(scores: np.ndarray, rows: np.ndarray, k: int) -> Candidates:
    """The best `k` candidates of each query, score descending then row ascending: (Q, k') scores and rows,
    k' = min(k, M). `scores` (Q, M), no NaN; `rows` (Q, M) or (M,) their row numbers."""
    rows = np.broadcast_to(rows, scores.shape)
    count, m = scores.shape
    k = min(k, m)
    if m > k:  # every candidate at least as good as the k-th best (all its ties) stays in the running
        kth = np.partition(scores, m - k, axis=1)[:, m - k:m - k + 1]
        query, col = np.nonzero(scores >= kth)
    else:
        query, col = np.divmod(np.arange(count * m), m)
    picked, picked_rows = scores[query, col], rows[query, col]
    order = np.lexsort((picked_rows, -picked, query))  # by query, then score descending, then row
    query = query[order]
    first = np.searchsorted(query, np.arange(count))
    keep = order[np.arange(len(order)) - first[query] < k]
    return picked[keep].reshape(count, k), picked_rows[keep].reshape(count, k)


def _merge(best: Candidates, new: Candidates, k: int) -> Candidates:
    return select(np.concatenate([best[0], new[0]], 1), np.concatenate([best[1], new[1]], 1), k)


def score_rows(rows: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """(Q, R) cosines of the queries (Q, E) float32 with `rows` (R, E) of any float dtype, as float32 (every
    exact score of the package is computed here, so a row scores the same wherever it is found)."""
    with np.errstate(invalid="ignore", over="ignore"):  # a NaN/inf row: refused by _check_finite
        if 0 < len(queries) <= SMALL_BATCH:
            return np.stack([np.einsum("ij,j->i", rows, query, dtype=np.float32, casting="same_kind")
                             for query in queries])
        return queries @ np.asarray(rows, dtype=np.float32).T


def _check_finite(scores: np.ndarray, rows: np.ndarray, name: str) -> None:
    """Refuse the first row (`rows`: the row number of each column) whose scores are not finite."""
    bad = np.flatnonzero(~np.isfinite(scores).all(axis=0))
    if bad.size:
        raise DGLError(f"{name}: row {int(rows[bad[0]])} is NaN/inf (or too large): the set is damaged, re-embed it")


def _numpy_shard(vectors: np.ndarray, queries: np.ndarray, k: int, shard: range, chunk_rows: int,
                 name: str) -> Candidates:
    """Exact top-k of the rows in `shard`, scored chunk by chunk."""
    best = (np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64))
    for start in range(shard.start, shard.stop, chunk_rows):
        rows = np.arange(start, min(start + chunk_rows, shard.stop))
        scores = score_rows(vectors[rows[0]:rows[-1] + 1], queries)
        _check_finite(scores, rows, name)
        best = _merge(best, select(scores, rows, k), k)
    return best


def _faiss_shard(vectors: np.ndarray, queries: np.ndarray, fetch: int, shard: range) -> Candidates:
    """The `fetch` best rows of `shard` for each query by FAISS's float16 scan, read in place (a memory map's
    pages, no copy): candidates, to be re-scored exactly. Its heap takes a row only when strictly better, so
    among equal scores the first rows stay; a NaN row never enters it."""
    import faiss

    codes = np.ascontiguousarray(vectors[shard.start:shard.stop]).view(np.uint8)  # float16 bytes = its codes
    quantizer = faiss.ScalarQuantizer(vectors.shape[1], faiss.ScalarQuantizer.QT_fp16)
    scanner = quantizer.select_InvertedListScanner(faiss.METRIC_INNER_PRODUCT, None, True, None, False)
    scanner.set_list(0, 0.0)  # with store_pairs, a hit's label is its position in `codes`
    fetch = min(fetch, len(shard))
    scores = np.full((len(queries), fetch), -np.inf, np.float32)
    rows = np.full((len(queries), fetch), -1, np.int64)
    for query, heap_scores, heap_rows in zip(queries, scores, rows, strict=True):
        scanner.set_query(faiss.swig_ptr(query))
        scanner.scan_codes(len(shard), faiss.swig_ptr(codes), None, faiss.swig_ptr(heap_scores),
                           faiss.swig_ptr(heap_rows), fetch)
    return scores, np.where(rows >= 0, rows + shard.start, -1)


def _rescore(vectors: np.ndarray, queries: np.ndarray, candidates: np.ndarray, k: int, name: str) -> Candidates:
    """Exact top-k among the candidate rows (any query's: each is a real row with its exact score)."""
    rows = np.unique(candidates[candidates >= 0])  # sorted: one forward pass over the memory map
    scores = score_rows(vectors[rows], queries)
    _check_finite(scores, rows, name)
    return select(scores, rows, k)


def rounding_bound(queries: np.ndarray, max_norm: float) -> np.ndarray:
    """(Q,) the most a query's float32 score of any row (norm <= `max_norm`) can differ from its score of the
    row rounded to float16 (FAISS's float32 sums of the float16 values): round-to-nearest float16 moves each
    value by at most 2^-11 of it (normal range) or 2^-25 (subnormal), and E-term float32 sums err by at most
    E * 2^-24 of the sum of |products|, in either score; sum of |products| <= |q| |row| (Cauchy-Schwarz)."""
    dim = queries.shape[1]
    return (np.linalg.norm(queries, axis=1) * max_norm * (2.0 ** -11 + 2 * dim * 2.0 ** -24) * (1 + 2.0 ** -10)
            + np.abs(queries).sum(1) * 2.0 ** -25)


def _scan_copy_top_k(vectors: np.ndarray, scan: ScanCopy, queries: np.ndarray, k: int, shards: list[range],
                     name: str) -> Candidates | None:
    """Exact top-k of float32 `vectors` through their float16 copy (module docstring); None where a shard's
    proposals do not cover the rounding bound (the caller scans the float32 rows)."""
    fetch = 2 * k + SCAN_SPARE
    found = _run(lambda shard: _faiss_shard(scan.rows, queries, fetch, shard), shards)
    scores = np.concatenate([f[0] for f in found], 1)  # (Q, proposals) float16 scores
    floor = -np.partition(-scores, k - 1, axis=1)[:, k - 1] - 2 * rounding_bound(queries, scan.max_norm)  # (Q,)
    for shard, (shard_scores, _) in zip(shards, found, strict=True):
        if len(shard) > fetch and np.any(shard_scores.min(1) >= floor):  # unproposed rows may be within the bound
            return None
    rows = np.concatenate([f[1] for f in found], 1)
    return _rescore(vectors, queries, np.where(scores >= floor[:, None], rows, -1), k, name)


def _use_faiss(vectors: np.ndarray, queries: np.ndarray, k: int) -> bool:
    """Whether float16 rows go through the FAISS float16 scan (installed, few queries, k small enough; a large
    batch is compute-bound: BLAS on converted chunks is faster there)."""
    if vectors.dtype != np.float16 or len(queries) > SMALL_BATCH or k > FAISS_MAX_K:
        return False
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _shards(n: int, chunk_rows: int, threads: int) -> list[range]:
    """Contiguous shards of range(n), one per thread but none under one chunk."""
    count = max(1, min(threads, -(-n // chunk_rows)))
    edges = [n * i // count for i in range(count + 1)]
    return [range(a, b) for a, b in zip(edges, edges[1:], strict=False)]


def _run(task: Any, shards: list[range]) -> list[Candidates]:
    """task(shard) for every shard, on the search threads."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(search_threads(), thread_name_prefix="dgl-search")
    return [future.result() for future in [_pool.submit(task, shard) for shard in shards]]


def top_k(vectors: np.ndarray, queries: np.ndarray, k: int, chunk_rows: int = CHUNK_ROWS,
          name: str = "embeddings", threads: int | None = None, scan: ScanCopy | None = None) -> Candidates:
    """Best `k` rows of `vectors` (N, E) for each query (Q, E): (scores (Q, k'), rows (Q, k')), k' = min(k, N),
    best first, ties by row. A row whose scores are not finite is refused (DGLError naming `name` and the row).
    `threads`: shards scored in parallel (default `search_threads()`; one for more than SMALL_BATCH queries,
    where BLAS uses the cores itself). `scan`: float32 rows' float16 copy, scanned first (module docstring)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    k = min(k, vectors.shape[0])
    threads = 1 if len(queries) > SMALL_BATCH else threads or search_threads()
    shards = _shards(vectors.shape[0], chunk_rows, threads)
    if scan is not None and k > 0 and _use_faiss(scan.rows, queries, k):
        found = _scan_copy_top_k(vectors, scan, queries, k, shards, name)
        if found is not None:
            return found
    if not _use_faiss(vectors, queries, k):
        found = _run(lambda shard: _numpy_shard(vectors, queries, k, shard, chunk_rows, name), shards)
        return select(np.concatenate([f[0] for f in found], 1), np.concatenate([f[1] for f in found], 1), k)
    found = _run(lambda shard: _faiss_shard(vectors, queries, 2 * k, shard), shards)
    return _rescore(vectors, queries, np.concatenate([f[1] for f in found], 1), k, name)


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
    scores, rows = top_k(store.vectors, queries, k, name=str(store.paths.emb), scan=store.scan_copy)
    return [[make_hit(store, r + 1, s, row) for r, (s, row) in enumerate(zip(qs, qr, strict=False))]
            for qs, qr in zip(scores, rows, strict=False)]
