"""Post-hoc re-ranking: DSL fixes a hub video, QB-Norm formula / activation / labelling, and errors."""

from __future__ import annotations

import numpy as np
import pytest

from dgl_deploy import DGLError
from dgl_deploy.evaluation.metrics import evaluate, t2v_ranks
from dgl_deploy.evaluation.rerank import dual_softmax, qb_norm

# Video 2 is a "hub": the closest video for every caption.
HUB = np.array([[0.50, 0.10, 0.60], [0.10, 0.50, 0.60], [0.10, 0.10, 0.70]])


def test_dual_softmax_fixes_hub_video() -> None:
    assert t2v_ranks(HUB).tolist() == [2, 2, 1]
    assert t2v_ranks(dual_softmax(HUB)).tolist() == [1, 1, 1]


def test_dual_softmax_axes_and_formula() -> None:
    rng = np.random.default_rng(0)
    sims = rng.uniform(-1, 1, size=(4, 6))
    prior = np.exp(sims * 10) / np.exp(sims * 10).sum(axis=0, keepdims=True)
    np.testing.assert_allclose(dual_softmax(sims, temperature=10), sims * prior)
    np.testing.assert_allclose(dual_softmax(sims, query_axis=1), dual_softmax(sims.T, query_axis=0).T)
    with pytest.raises(DGLError, match="query_axis"):
        dual_softmax(sims, query_axis=2)


def test_qb_norm_inverted_softmax_formula() -> None:
    rng = np.random.default_rng(1)
    sims, bank = rng.uniform(-1, 1, size=(5, 4)), rng.uniform(-1, 1, size=(7, 4))
    out = qb_norm(sims, bank, beta=3.0, k=None)
    assert out.shape == sims.shape
    np.testing.assert_allclose(np.exp(out), np.exp(3 * sims) / np.exp(3 * bank).sum(axis=0))


def test_qb_norm_does_not_overflow_on_logit_scaled_sims() -> None:
    out = qb_norm(HUB * 100, HUB * 100, beta=20.0, k=None)
    assert np.isfinite(out).all()


def test_qb_norm_demotes_hub_and_activation_set() -> None:
    bank = np.array([[0.1, 0.2, 0.6], [0.2, 0.1, 0.6], [0.1, 0.1, 0.6]])  # the bank always retrieves video 2
    assert t2v_ranks(qb_norm(HUB, bank, beta=20.0, k=None)).tolist() == [1, 1, 1]
    assert t2v_ranks(qb_norm(HUB, bank, beta=20.0, k=1)).tolist() == [1, 1, 1]
    # A query whose top-1 (video 0) is outside the bank's top-1 set keeps beta * s.
    query = np.array([[0.9, 0.1, 0.2]])
    np.testing.assert_allclose(qb_norm(query, bank, beta=20.0, k=1), 20.0 * query)


@pytest.mark.parametrize(
    ("bank", "k", "message"),
    [(np.zeros((2, 4)), 1, "query bank must be"), (np.zeros((2, 3)), 4, "k must be"), (np.full((2, 3), np.nan), 1, "NaN")],
)
def test_qb_norm_bad_input(bank: np.ndarray, k: int, message: str) -> None:
    with pytest.raises(DGLError, match=message):
        qb_norm(HUB, bank, k=k)


def test_evaluate_labels_rerank_rows() -> None:
    dsl = evaluate(HUB, rerank="dsl")
    assert list(dsl) == ["t2v", "t2v +DSL", "v2t", "v2t +DSL"]
    assert dsl["t2v"]["R@1"] == pytest.approx(100 / 3) and dsl["t2v +DSL"]["R@1"] == 100.0
    qb = evaluate(HUB, rerank="qbnorm", query_bank=HUB[[2, 2]])
    assert list(qb) == ["t2v", "t2v +QB-Norm", "v2t"]
    optimistic = evaluate(HUB, rerank="qbnorm", test_queries_as_bank=True)
    assert list(optimistic)[1] == "t2v +QB-Norm (test queries as bank: optimistic)"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rerank": "qbnorm"}, "needs a query bank"),
        ({"rerank": "qbnorm", "query_bank": HUB, "test_queries_as_bank": True}, "not both"),
        ({"rerank": "dsl", "query_bank": HUB}, "only used with --rerank qbnorm"),
        ({"query_bank": HUB}, "only used with --rerank qbnorm"),
        ({"rerank": "bogus"}, "unknown re-ranking method"),
    ],
)
def test_evaluate_rerank_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(DGLError, match=message):
        evaluate(HUB, **kwargs)
