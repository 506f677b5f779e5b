"""Retrieval metrics: hand-made ranks (single/multi caption, pessimistic ties), the reference matrix, errors."""

from __future__ import annotations

import numpy as np
import pytest

from dgl_deploy import DGLError
from dgl_deploy.evaluation import metrics
from dgl_deploy.evaluation.metrics import retrieval_metrics, summarize_ranks, t2v_ranks, v2t_ranks
from tests.conftest import REFERENCE as SHARED_REFERENCE
from tests.conftest import require_shared

REFERENCE = SHARED_REFERENCE / "msrvtt_1k_dgl_vit16_sims.npy"


def _reference_sims() -> np.ndarray:
    """The reference similarity matrix (MSR-VTT 1k-A, DGL ViT-B/16) from shared/; the test fails without it."""
    return np.load(require_shared(REFERENCE), allow_pickle=False)


def _optimistic_diagonal_ranks(sims: np.ndarray) -> np.ndarray:
    """The common reference evaluator: sort each row, rank = first position of the diagonal score."""
    sorted_rows = np.sort(-sims, axis=1)
    return np.argmax(sorted_rows == -np.diag(sims)[:, None], axis=1) + 1


def test_square_known_ranks() -> None:
    sims = np.array([[0.9, 0.1, 0.5], [0.8, 0.7, 0.2], [0.3, 0.6, 0.4]], dtype=np.float32)
    assert t2v_ranks(sims).tolist() == [1, 2, 2]
    assert v2t_ranks(sims).tolist() == [1, 1, 2]
    result = retrieval_metrics(sims)
    assert result["t2v"] == {"R@1": 100 / 3, "R@5": 100.0, "R@10": 100.0, "MdR": 2.0, "MnR": 5 / 3, "queries": 3}
    assert result["v2t"]["R@1"] == 200 / 3 and result["v2t"]["MnR"] == 4 / 3


def test_ties_are_pessimistic() -> None:
    assert t2v_ranks(np.ones((3, 3))).tolist() == [3, 3, 3]
    assert v2t_ranks(np.ones((3, 3))).tolist() == [3, 3, 3]
    sims = np.array([[0.5, 0.5, 0.2], [0.1, 0.4, 0.4], [0.5, 0.5, 0.2]])
    assert t2v_ranks(sims).tolist() == [2, 2, 3]


def test_multi_caption_both_directions() -> None:
    sims = np.array(
        [
            [0.9, 0.2, 0.1],
            [0.3, 0.6, 0.4],
            [0.5, 0.5, 0.1],
            [0.2, 0.55, 0.3],
            [0.7, 0.1, 0.6],
        ]
    )
    c2v = np.array([0, 0, 1, 1, 2])
    assert t2v_ranks(sims, c2v).tolist() == [1, 3, 2, 1, 2]
    # video 1: best ground-truth caption is c3 (0.55), only the non-GT c1 (0.6) is above it.
    assert v2t_ranks(sims, c2v).tolist() == [1, 2, 1]
    assert retrieval_metrics(sims, c2v)["v2t"]["queries"] == 3


def test_multi_caption_tie_only_non_ground_truth_counts() -> None:
    sims = np.array([[0.5, 0.1], [0.5, 0.2], [0.5, 0.3]])
    c2v = np.array([0, 0, 1])
    # video 0: its two captions tie with the non-GT caption 2 -> 1 + 0 greater + 1 other equal.
    assert v2t_ranks(sims, c2v).tolist() == [2, 1]
    assert t2v_ranks(sims, c2v).tolist() == [1, 1, 2]


def test_videos_without_captions_are_not_queries() -> None:
    sims = np.array([[0.9, 0.1, 0.2], [0.1, 0.3, 0.8]])
    assert v2t_ranks(sims, np.array([0, 2])).tolist() == [1, 1]
    assert retrieval_metrics(sims, np.array([0, 2]))["v2t"]["queries"] == 2


def test_chunking_gives_identical_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    sims = rng.integers(0, 20, size=(300, 50)).astype(np.float32)
    c2v = rng.integers(0, 50, size=300)
    expected = retrieval_metrics(sims, c2v)
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 7)
    assert retrieval_metrics(sims, c2v) == expected


def test_summary_median_of_even_count() -> None:
    assert summarize_ranks(np.array([1, 2, 3, 10]))["MdR"] == 2.5


@pytest.mark.parametrize(
    ("sims", "c2v", "message"),
    [
        (np.array([[1.0, np.nan], [0.0, 1.0]]), None, "NaN/inf"),
        (np.array([[1.0, np.inf], [0.0, 1.0]]), None, "NaN/inf"),
        (np.zeros((2, 3)), None, "not square"),
        (np.zeros(3), None, "2-D"),
        (np.zeros((2, 2), dtype=np.int64), None, "floating-point"),
        (np.zeros((3, 2)), np.array([0, 1]), "one per caption"),
        (np.zeros((3, 2)), np.array([0, 1, 2]), "must be in"),
        (np.zeros((2, 2)), np.array([0.0, 1.0]), "integers"),
    ],
)
def test_bad_input_raises(sims: np.ndarray, c2v: np.ndarray | None, message: str) -> None:
    with pytest.raises(DGLError, match=message):
        retrieval_metrics(sims, c2v)


def test_reference_text_to_video_exact() -> None:
    result = retrieval_metrics(_reference_sims())["t2v"]
    assert result == {"R@1": 48.0, "R@5": 71.3, "R@10": 81.4, "MdR": 2.0, "MnR": 13.649, "queries": 1000}


def test_reference_video_to_text_ties_pessimistic_vs_optimistic() -> None:
    transposed = _reference_sims().T
    pessimistic = t2v_ranks(transposed)
    optimistic = _optimistic_diagonal_ranks(transposed)
    assert np.count_nonzero(pessimistic != optimistic) == 9  # exact ties exist
    assert np.all(pessimistic >= optimistic)
    assert summarize_ranks(optimistic) == {"R@1": 46.9, "R@5": 74.9, "R@10": 83.7, "MdR": 2.0, "MnR": 9.779, "queries": 1000}
    expected = {"R@1": 46.5, "R@5": 74.9, "R@10": 83.7, "MdR": 2.0, "MnR": 9.791, "queries": 1000}
    assert summarize_ranks(pessimistic) == expected
    assert retrieval_metrics(transposed.T)["v2t"] == expected
