"""Optional post-hoc re-ranking of a similarity matrix (vectorised numpy).

Both methods change scores after the model has run; results obtained with them are
*re-ranked* results and must be reported as such, next to the plain ones.

- DSL (dual softmax, as used at inference by CAMoE and the "dual softmax loss"
  literature): each score is multiplied by a softmax prior computed across the
  *queries*, which demotes "hub" gallery items that are close to every query.
  It is transductive: the prior uses every test query at once.
- QB-Norm (querybank normalisation with the inverted softmax, Bogolin et al.,
  CVPR 2022): each gallery item's score is divided by how strongly a bank of
  *other* queries (e.g. training captions vs the test videos) retrieves it.
  Using the test queries themselves as the bank is optimistic (it peeks at the
  test queries' statistics) and is only available behind an explicit flag.
"""

from __future__ import annotations

from enum import Enum

import numpy as np

from dgl_deploy.errors import DGLError

DSL_TEMPERATURE = 100.0
QB_BETA = 20.0
QB_K = 1


class RerankMethod(str, Enum):
    """The available re-ranking methods."""

    dsl = "dsl"
    qbnorm = "qbnorm"


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    """Numerically stable softmax along `axis`."""
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def dual_softmax(sims: np.ndarray, temperature: float = DSL_TEMPERATURE, query_axis: int = 0) -> np.ndarray:
    """Dual-softmax re-ranking: `sims * softmax(sims * temperature, axis=query_axis)`.

    `sims` is (num_captions, num_videos). For text→video retrieval the queries are the
    captions (`query_axis=0`: each video's prior is a softmax over all captions); for
    video→text use `query_axis=1`. The default temperature 100 suits cosine similarities
    (it plays the role of CLIP's logit scale); for similarities already multiplied by the
    logit scale use a temperature around 1. Computed in float64.
    """
    if query_axis not in (0, 1):
        raise DGLError(f"dual softmax: query_axis must be 0 or 1, got {query_axis}")
    s = np.asarray(sims, dtype=np.float64)
    return s * _softmax(s * temperature, axis=query_axis)


def _activated_queries(sims: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    """Dynamic inverted softmax: the queries whose top-1 item is among the bank's top-k items."""
    if not 1 <= k <= bank.shape[1]:
        raise DGLError(f"QB-Norm: k must be between 1 and the gallery size {bank.shape[1]}, got {k}")
    bank_topk = np.argpartition(-bank, k - 1, axis=1)[:, :k]
    return np.isin(sims.argmax(axis=1), bank_topk)


def qb_norm(sims: np.ndarray, bank: np.ndarray, beta: float = QB_BETA, k: int | None = QB_K) -> np.ndarray:
    """Querybank normalisation with the inverted softmax (Bogolin et al., CVPR 2022).

    `sims` is (num_queries, num_gallery) with one row per query; `bank` is
    (num_bank_queries, num_gallery): similarities of a query bank to the *same* gallery
    (for text→video: training captions vs the test videos). A query's normalised score
    for item j is `exp(beta * s_j) / sum_b exp(beta * bank[b, j])`.

    With `k` set (default 1, the paper's dynamic inverted softmax) only the queries whose
    top-1 item is among the items the bank retrieves in its top-k are normalised; the
    others keep their scores. `k=None` normalises every query. Scores are returned in
    log space (`beta * s - logsumexp_b(beta * bank)`, or `beta * s` when not normalised),
    which never overflows and gives the same per-query ranking as the exponentiated form.
    """
    s = np.asarray(sims, dtype=np.float64)
    b = np.asarray(bank, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != s.shape[1] or b.shape[0] == 0:
        raise DGLError(
            f"QB-Norm: the query bank must be (num_bank_queries, {s.shape[1]}) to match the gallery, got {b.shape}"
        )
    if not np.isfinite(b).all():
        raise DGLError("QB-Norm: the query bank contains NaN or inf values")
    scaled = beta * b
    peak = scaled.max(axis=0)
    log_norm = peak + np.log(np.exp(scaled - peak).sum(axis=0))
    out = beta * s
    rows = slice(None) if k is None else _activated_queries(s, b, k)
    out[rows] -= log_norm
    return out
