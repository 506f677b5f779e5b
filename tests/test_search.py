"""Exact search (`search.top_k`) equals a brute-force numpy reference (all scores, sorted by score descending
then row ascending) for float32 and float16 rows, through the numpy and the FAISS float16 paths, any chunk and
shard sizes, one query or a batch, ties included; NaN/inf rows are refused in every path. float32 rows searched
through their float16 scan copy give exactly the float32 scan's result, near-ties below float16's resolution
included."""

from __future__ import annotations

import numpy as np
import pytest

from dgl_deploy import DGLError
from dgl_deploy.retrieval import search
from dgl_deploy.retrieval.search import FAISS_MAX_K, SMALL_BATCH, top_k
from dgl_deploy.retrieval.store import ScanCopy


def reference(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries.astype(np.float32) @ np.asarray(vectors, np.float32).T
    order = np.lexsort((np.broadcast_to(np.arange(scores.shape[1]), scores.shape), -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, 1), order


def _case(rng: np.random.Generator, dtype: type, ties: bool, queries: int) -> tuple[np.ndarray, np.ndarray]:
    """Random rows and queries; with `ties`, halves (exact sums whatever the order: true ties) and copied rows."""
    n = int(rng.integers(50, 1500))
    vectors = rng.standard_normal((n, 16)).astype(dtype)
    query = rng.standard_normal((queries, 16)).astype(np.float32)
    if ties:
        vectors, query = (np.round(vectors * 2) / 2).astype(dtype), np.round(query * 2) / 2
        vectors[rng.integers(0, n, n // 3)] = vectors[rng.integers(0, n, n // 3)]
    return vectors, query


@pytest.mark.parametrize("faiss_path", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_top_k_equals_brute_force(dtype, faiss_path, monkeypatch) -> None:
    if faiss_path:
        pytest.importorskip("faiss")
    else:
        monkeypatch.setattr(search, "_use_faiss", lambda *_: False)
    rng = np.random.default_rng(0)
    for trial in range(24):
        vectors, queries = _case(rng, dtype, ties=trial % 2 == 1, queries=(1, 3, SMALL_BATCH + 3)[trial % 3])
        k = int(rng.integers(1, 40))
        expected_scores, expected_rows = reference(vectors, queries, k)
        for threads in (1, 2, 3):
            scores, rows = top_k(vectors, queries, k, chunk_rows=int(rng.integers(1, 300)), threads=threads)
            np.testing.assert_array_equal(rows, expected_rows)
            np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-6)


def test_all_rows_tied_are_returned_by_row() -> None:
    vectors = np.ones((1000, 8), np.float16)
    for k in (1, 10, 1000, FAISS_MAX_K + 1):
        scores, rows = top_k(vectors, np.ones((1, 8), np.float32), k, chunk_rows=64, threads=2)
        np.testing.assert_array_equal(rows[0], np.arange(min(k, 1000)))
        assert np.all(scores == 8.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("k", [5, FAISS_MAX_K + 1])  # the FAISS float16 scan (its candidates), and numpy's
@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_nan_or_inf_row_is_refused(dtype, k, bad) -> None:
    if bad != bad and dtype == np.float16 and k <= FAISS_MAX_K:
        pytest.skip("the FAISS float16 scan never proposes a NaN row (search.py docstring)")
    vectors = np.abs(np.random.default_rng(1).standard_normal((5000, 8))).astype(dtype)
    vectors[3001] = bad
    with pytest.raises(DGLError, match="emb.npy: row 3001 is NaN/inf"):
        top_k(vectors, np.ones((1, 8), np.float32), k, chunk_rows=512, threads=2, name="emb.npy")


def _scan_copy(vectors: np.ndarray) -> ScanCopy:
    """The float16 copy the store writes for a float32 set (`store._write_scan_copy`)."""
    return ScanCopy(vectors.astype(np.float16), float(np.linalg.norm(vectors.astype(np.float64), axis=1).max()))


def test_rounding_bound_holds() -> None:
    """The FAISS float16 score of a rounded row is within `rounding_bound` of the exact (float64) score, also for
    rows with subnormal float16 values and large norms."""
    pytest.importorskip("faiss")
    rng = np.random.default_rng(3)
    for scale in (1e-5, 1.0, 300.0):
        vectors = (rng.standard_normal((3000, 64)) * scale).astype(np.float32)
        queries = rng.standard_normal((3, 64)).astype(np.float32)
        scan = _scan_copy(vectors)
        approx, rows = search._faiss_shard(scan.rows, queries, 3000, range(3000))
        exact = np.take_along_axis(queries.astype(np.float64) @ vectors.astype(np.float64).T, rows, 1)
        bound = search.rounding_bound(queries, scan.max_norm)[:, None] / 2  # one rounding + one sum of the two
        assert np.all(np.abs(approx - exact) <= bound)


def _near_ties(rng: np.random.Generator, copies: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows with `copies` near-copies of row 0 that differ below float16's resolution (equal float16 rows,
    different float32 scores), and a query that ranks them first."""
    vectors = rng.standard_normal((2000, 32)).astype(np.float32)
    vectors[1:copies + 1] = vectors[0] + rng.standard_normal((copies, 32)).astype(np.float32) * 1e-5
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors, vectors[:1] + rng.standard_normal((1, 32)).astype(np.float32) * 0.01


@pytest.mark.parametrize("copies", [0, 5, 300])  # none, within the spare candidates, more (the float32 fallback)
def test_scan_copy_top_k_equals_float32_scan(copies, monkeypatch) -> None:
    pytest.importorskip("faiss")
    rng = np.random.default_rng(copies)
    original, covered = search._scan_copy_top_k, []
    monkeypatch.setattr(search, "_scan_copy_top_k", lambda *a: covered.append(found := original(*a)) or found)
    for trial in range(12):
        near_ties = trial % 3 == 0
        if near_ties:
            vectors, queries = _near_ties(rng, copies)
        else:
            vectors, queries = _case(rng, np.float32, ties=trial % 3 == 2, queries=(1, 3)[trial % 2])
        k = int(rng.integers(1, 40))
        expected_scores, expected_rows = top_k(vectors, queries, k, threads=2)
        scores, rows = top_k(vectors, queries, k, chunk_rows=int(rng.integers(1, 300)), threads=2,
                             scan=_scan_copy(vectors))
        np.testing.assert_array_equal(rows, expected_rows)
        np.testing.assert_array_equal(scores, expected_scores)
        if near_ties:  # the copy answered, or (more near-copies than candidates) the float32 scan did
            assert (covered[-1] is None) == (copies > 2 * k + search.SCAN_SPARE)
