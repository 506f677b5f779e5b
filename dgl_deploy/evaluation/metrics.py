"""Retrieval metrics for a caption × video similarity matrix, plus their table / JSON rendering.

Conventions: `sims` is (num_captions, num_videos), row i = caption i, column j = video j;
`caption_to_video[i]` is the ground-truth video of caption i (default: the identity, which
needs a square matrix). Ranks start at 1.

Ties are ranked *pessimistically*: the rank of a ground-truth item is
`1 + #(scores strictly greater than its score) + #(non-ground-truth items with exactly
equal score)`, i.e. every tie is broken against the ground truth. The widespread
reference evaluator (`np.sort` then `np.where` on the diagonal) is optimistic on ties;
ours is pessimistic by design, so a degenerate model (e.g. constant scores) cannot
score well.

Everything is vectorised and processed in row chunks, so large matrices
(e.g. 60000 × 3000) need only a few extra megabytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from dgl_deploy.errors import DGLError
from dgl_deploy.evaluation.rerank import DSL_TEMPERATURE, QB_BETA, QB_K, RerankMethod, dual_softmax, qb_norm

RECALL_AT = (1, 5, 10)
_CHUNK_ELEMENTS = 1 << 22


def _row_chunks(shape: tuple[int, int]) -> Iterator[slice]:
    """Row slices of about `_CHUNK_ELEMENTS` elements each."""
    step = max(1, _CHUNK_ELEMENTS // max(1, shape[1]))
    for start in range(0, shape[0], step):
        yield slice(start, start + step)


def check_similarity_matrix(sims: np.ndarray, name: str = "sims") -> None:
    """Raise DGLError unless `sims` is a non-empty, finite, 2-D floating-point matrix."""
    if not isinstance(sims, np.ndarray) or sims.ndim != 2 or sims.size == 0:
        shape = getattr(sims, "shape", type(sims).__name__)
        raise DGLError(f"{name}: expected a non-empty 2-D (captions, videos) matrix, got shape {shape}")
    if not np.issubdtype(sims.dtype, np.floating):
        raise DGLError(f"{name}: expected a floating-point matrix, got dtype {sims.dtype}")
    bad = sum(int((~np.isfinite(sims[rows])).sum()) for rows in _row_chunks(sims.shape))
    if bad:
        raise DGLError(f"{name}: contains {bad} NaN/inf value(s); similarities must be finite")


def _caption_map(sims: np.ndarray, caption_to_video: np.ndarray | None) -> np.ndarray:
    """The validated caption → ground-truth-video index array."""
    num_captions, num_videos = sims.shape
    if caption_to_video is None:
        if num_captions != num_videos:
            raise DGLError(
                f"sims is {num_captions}x{num_videos}, not square: pass a caption-to-video mapping "
                "(--captions-to-videos) giving each caption's ground-truth video"
            )
        return np.arange(num_captions)
    c2v = np.asarray(caption_to_video)
    if c2v.shape != (num_captions,) or not np.issubdtype(c2v.dtype, np.integer):
        raise DGLError(
            f"caption-to-video mapping: expected {num_captions} integers (one per caption), "
            f"got shape {c2v.shape} dtype {c2v.dtype}"
        )
    if c2v.min() < 0 or c2v.max() >= num_videos:
        raise DGLError(f"caption-to-video mapping: video indices must be in [0, {num_videos}), got {c2v.min()}..{c2v.max()}")
    return c2v.astype(np.intp)


def t2v_ranks(sims: np.ndarray, caption_to_video: np.ndarray | None = None) -> np.ndarray:
    """Per caption, the pessimistic rank of its ground-truth video among all videos."""
    check_similarity_matrix(sims)
    c2v = _caption_map(sims, caption_to_video)
    gt = sims[np.arange(len(c2v)), c2v]
    ranks = np.empty(len(c2v), dtype=np.int64)
    for rows in _row_chunks(sims.shape):
        ranks[rows] = (sims[rows] >= gt[rows, None]).sum(axis=1)
    return ranks


def v2t_ranks(sims: np.ndarray, caption_to_video: np.ndarray | None = None) -> np.ndarray:
    """Per video (that has at least one caption), the pessimistic rank of its best-ranked
    ground-truth caption among all captions (the standard multi-caption protocol).

    A video's best ground-truth score is the max over its captions; its rank is
    `1 + #(captions scoring higher) + #(non-ground-truth captions scoring equal)`.
    Videos without any caption are not queries and are left out.
    """
    check_similarity_matrix(sims)
    c2v = _caption_map(sims, caption_to_video)
    num_videos = sims.shape[1]
    gt = sims[np.arange(len(c2v)), c2v]
    best = np.full(num_videos, -np.inf, dtype=sims.dtype)
    np.maximum.at(best, c2v, gt)
    gt_at_best = np.bincount(c2v, weights=gt == best[c2v], minlength=num_videos)
    at_or_above = np.zeros(num_videos, dtype=np.int64)
    for rows in _row_chunks(sims.shape):
        at_or_above += (sims[rows] >= best).sum(axis=0)
    has_caption = np.bincount(c2v, minlength=num_videos) > 0
    return (at_or_above - gt_at_best.astype(np.int64) + 1)[has_caption]


def summarize_ranks(ranks: np.ndarray) -> dict[str, float | int]:
    """R@1/5/10 (percent), median rank MdR, mean rank MnR and the number of queries."""
    n = len(ranks)
    if n == 0:
        raise DGLError("no queries to evaluate")
    summary: dict[str, float | int] = {f"R@{k}": 100.0 * int((ranks <= k).sum()) / n for k in RECALL_AT}
    summary["MdR"] = float(np.median(ranks))
    summary["MnR"] = int(ranks.sum()) / n
    summary["queries"] = n
    return summary


def retrieval_metrics(sims: np.ndarray, caption_to_video: np.ndarray | None = None) -> dict[str, dict[str, float | int]]:
    """Text→video (`t2v`) and video→text (`v2t`) metrics of a caption × video matrix.

    `t2v`: one query per caption, ranking all videos. `v2t`: one query per video with a
    caption, the rank of its best-ranked ground-truth caption among all captions. Ties are
    ranked pessimistically (see the module docstring). NaN/inf or shape mismatches raise
    DGLError.
    """
    return {
        "t2v": summarize_ranks(t2v_ranks(sims, caption_to_video)),
        "v2t": summarize_ranks(v2t_ranks(sims, caption_to_video)),
    }


def evaluate(
    sims: np.ndarray,
    caption_to_video: np.ndarray | None = None,
    rerank: RerankMethod | str | None = None,
    query_bank: np.ndarray | None = None,
    *,
    test_queries_as_bank: bool = False,
    dsl_temperature: float = DSL_TEMPERATURE,
    qb_beta: float = QB_BETA,
    qb_k: int | None = QB_K,
) -> dict[str, dict[str, float | int]]:
    """Plain metrics, plus labelled re-ranked rows next to them when `rerank` is set.

    DSL adds `t2v +DSL` and `v2t +DSL`. QB-Norm adds `t2v +QB-Norm` and needs a text
    `query_bank` (bank captions × the same videos); `test_queries_as_bank=True` uses the
    test captions instead and labels the row optimistic. QB-Norm's v2t would need a video
    query bank and is not computed.
    """
    method = _rerank_method(rerank)
    if method is not RerankMethod.qbnorm and (query_bank is not None or test_queries_as_bank):
        raise DGLError("a query bank is only used with --rerank qbnorm")
    plain = retrieval_metrics(sims, caption_to_video)
    if method is None:
        return plain
    if method is RerankMethod.dsl:
        t2v_dsl = dual_softmax(sims, dsl_temperature, query_axis=0)
        v2t_dsl = dual_softmax(sims, dsl_temperature, query_axis=1)
        return {
            "t2v": plain["t2v"],
            "t2v +DSL": summarize_ranks(t2v_ranks(t2v_dsl, caption_to_video)),
            "v2t": plain["v2t"],
            "v2t +DSL": summarize_ranks(v2t_ranks(v2t_dsl, caption_to_video)),
        }
    bank, label = _qb_bank(sims, query_bank, test_queries_as_bank)
    reranked = qb_norm(sims, bank, beta=qb_beta, k=qb_k)
    return {"t2v": plain["t2v"], label: summarize_ranks(t2v_ranks(reranked, caption_to_video)), "v2t": plain["v2t"]}


def _rerank_method(rerank: RerankMethod | str | None) -> RerankMethod | None:
    """`rerank` as a RerankMethod (None stays None); an unknown name raises DGLError."""
    if rerank is None:
        return None
    try:
        return RerankMethod(rerank)
    except ValueError:
        choices = ", ".join(m.value for m in RerankMethod)
        raise DGLError(f"unknown re-ranking method {rerank!r}; choose one of: {choices}") from None


def _qb_bank(sims: np.ndarray, query_bank: np.ndarray | None, test_queries_as_bank: bool) -> tuple[np.ndarray, str]:
    """The QB-Norm query bank and the row label that says where it came from."""
    if test_queries_as_bank:
        if query_bank is not None:
            raise DGLError("give either a query bank or test-queries-as-bank, not both")
        return sims, "t2v +QB-Norm (test queries as bank: optimistic)"
    if query_bank is None:
        raise DGLError(
            "QB-Norm needs a query bank: similarities of held-out (e.g. training) captions to the test videos "
            "(--query-bank bank.npy); --qb-test-queries uses the test captions instead (optimistic)"
        )
    check_similarity_matrix(query_bank, "query bank")
    return query_bank, "t2v +QB-Norm"


def load_npy(path: Path, what: str) -> np.ndarray:
    """Load one `.npy` array (no pickles); a missing or unreadable file raises DGLError."""
    if not path.is_file():
        raise DGLError(f"{what} file not found: {path}")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DGLError(f"{what} file {path}: not a readable .npy array ({exc})") from None
    if not isinstance(array, np.ndarray):
        raise DGLError(f"{what} file {path}: expected a single .npy array, got an .npz archive")
    return array


def evaluate_similarity_file(
    sims_path: Path,
    captions_to_videos_path: Path | None = None,
    rerank: RerankMethod | None = None,
    query_bank_path: Path | None = None,
    **options: Any,
) -> dict[str, dict[str, float | int]]:
    """`evaluate` on matrices stored as `.npy` files; `options` are `evaluate`'s keyword options."""
    sims = load_npy(sims_path, "similarity matrix")
    check_similarity_matrix(sims, str(sims_path))
    c2v = None if captions_to_videos_path is None else load_npy(captions_to_videos_path, "caption-to-video mapping")
    bank = None if query_bank_path is None else load_npy(query_bank_path, "query bank")
    return evaluate(sims, c2v, rerank, bank, **options)


def format_metrics_table(results: Mapping[str, Mapping[str, float | int]], title: str = "Retrieval metrics") -> Table:
    """A rich table with one row per direction / re-ranked variant (as returned by `evaluate`)."""
    table = Table(title=title)
    table.add_column("direction")
    for column in (*(f"R@{k}" for k in RECALL_AT), "MdR", "MnR", "queries"):
        table.add_column(column, justify="right")
    for name, row in results.items():
        recalls = (f"{row[f'R@{k}']:.1f}" for k in RECALL_AT)
        table.add_row(name, *recalls, f"{row['MdR']:g}", f"{row['MnR']:.3f}", str(row["queries"]))
    return table


def results_to_json(results: Mapping[str, Mapping[str, float | int]]) -> str:
    """The results as indented JSON (full precision)."""
    return json.dumps(results, indent=2)
