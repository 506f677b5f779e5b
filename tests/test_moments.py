"""Temporal NMS of windows into moments (`retrieval.moments.MomentSet`, `search_moments`) and the moment-retrieval
metrics (`evaluation.moments`), on hand-made hits whose answers are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from dgl_deploy import DGLError
from dgl_deploy.evaluation.moments import Moment, moment_metrics, rank_moments, temporal_iou
from dgl_deploy.retrieval.ann_index import ExactIndex
from dgl_deploy.retrieval.moments import MERGE_MARGIN, MomentSet, search_moments
from dgl_deploy.retrieval.search import Hit
from dgl_deploy.retrieval.store import StorePaths, open_store, write_set


def _hit(score: float, video: str, start: float, end: float, row: int = 0) -> Hit:
    return Hit(0, score, row, video, start, end)


def _nms(*hits: Hit, k: int = 10, per_video: int = 0) -> list[tuple]:
    moments = MomentSet()
    for hit in hits:
        moments.add(hit)
    return [(m.rank, m.score, m.row, m.id, m.start, m.end) for m in moments.top(k, per_video)]


def test_touching_windows_within_the_margin_merge_and_weaker_ones_are_suppressed() -> None:
    assert MERGE_MARGIN == 0.01
    hits = [_hit(0.90, "a", 10, 20, 2), _hit(0.895, "a", 5, 15, 1),  # overlaps, 0.005 below: a grows to 5-20
            _hit(0.80, "b", 0, 10, 7), _hit(0.70, "a", 20, 30, 3),  # touches a (gap 0), 0.2 below: suppressed
            _hit(0.60, "a", 40, 50, 5),  # touches nothing: a second moment of a
            _hit(0.595, "a", 35, 45, 4)]  # touches the second moment only, 0.005 below it: 35-50
    assert _nms(*hits) == [(1, 0.90, 2, "a", 5, 20), (2, 0.80, 7, "b", 0, 10), (3, 0.60, 5, "a", 35, 50)]
    assert _nms(*hits, per_video=1) == [(1, 0.90, 2, "a", 5, 20), (2, 0.80, 7, "b", 0, 10)]
    assert _nms(*hits, k=2) == [(1, 0.90, 2, "a", 5, 20), (2, 0.80, 7, "b", 0, 10)]


def test_a_gap_is_no_touch_and_whole_video_hits_pass() -> None:
    assert _nms(_hit(0.9, "a", 0, 10), _hit(0.9, "a", 10.5, 20)) == [(1, 0.9, 0, "a", 0, 10), (2, 0.9, 0, "a", 10.5, 20)]
    whole = [Hit(0, 0.9, 0, "a"), Hit(0, 0.8, 1, "a"), Hit(0, 0.7, 2, "b")]
    moments = MomentSet()
    for hit in whole:
        moments.add(hit)
    assert [(m.rank, m.row) for m in moments.top(3)] == [(1, 0), (2, 1), (3, 2)]
    assert [m.row for m in moments.top(3, per_video=1)] == [0, 2]


def test_search_fetches_until_the_moments_are_settled(tmp_path) -> None:
    """40 touching 1 s windows of one video, scores falling by 0.0006 a window, and another video's 0.5: the
    first fetch (2k rows) sees only a few windows of the first moment."""
    scores = np.array([1.0 - 0.0006 * i for i in range(40)] + [0.5])
    rows = np.stack([scores, np.sqrt(1 - scores ** 2)], axis=1).astype(np.float32)
    ids = ["long.mp4"] * 40 + ["other.mp4"]
    spans = np.array([[i, i + 1] for i in range(40)] + [[0, 5]], np.float64)
    paths = StorePaths.of(tmp_path / "emb.npy")
    write_set(paths, [rows], ids, dim=2, dtype=np.float32, spans=spans,
              fields={"model_fingerprint": "x", "settings": {"segments": {"window": 1.0, "stride": 1.0,
                                                                          "scenes": None}}})
    index = ExactIndex(open_store(paths.emb))
    query = np.array([[1.0, 0.0]], np.float32)
    # windows 0..16 score >= 0.9904 (within 0.01 of 1.0): moment 0-17 s; window 17 (0.9898) touches it: suppressed;
    # window 18 (0.9892) touches no moment: a second one, taking windows down to 34 (0.9796 >= 0.9892 - 0.01); 35
    # is suppressed, 36 (0.9784) starts a third taking the rest (NMS keeps separate stretches of one video)
    assert [(h.id, h.start, h.end, h.rank, h.row) for h in search_moments(index, query, k=4)[0]] == \
        [("long.mp4", 0, 17, 1, 0), ("long.mp4", 18, 35, 2, 18), ("long.mp4", 36, 40, 3, 36), ("other.mp4", 0, 5, 4, 40)]
    assert [(h.id, h.start, h.end) for h in search_moments(index, query, k=2, per_video=1)[0]] == \
        [("long.mp4", 0, 17), ("other.mp4", 0, 5)]
    with pytest.raises(DGLError, match="per_video"):
        search_moments(index, np.array([[1.0, 0.0]], np.float32), k=2, per_video=-1)


def test_temporal_iou() -> None:
    assert temporal_iou((0, 10), (5, 15)) == pytest.approx(5 / 15)
    assert temporal_iou((0, 10), (0, 10)) == 1.0
    assert temporal_iou((0, 10), (10, 20)) == 0.0 and temporal_iou((0, 1), (5, 6)) == 0.0
    assert temporal_iou((2, 4), (0, 10)) == pytest.approx(0.2)


def test_moment_metrics_by_hand() -> None:
    truths = [Moment("a", 0, 10), Moment("b", 10, 20), Moment("c", 0, 4)]
    predictions = [
        [_hit(0.9, "a", 0, 8)],  # IoU 0.8: a hit at every threshold, R@1 and R@5
        [_hit(0.9, "a", 10, 20), _hit(0.8, "b", 12, 20)],  # top-1 wrong video; rank 2 IoU 0.8
        [_hit(0.9, "c", 0, 10), _hit(0.8, "x", 0, 4)],  # top-1 IoU 0.4: only IoU 0.3
    ]
    metrics = moment_metrics(predictions, truths)
    assert metrics["R@1,IoU=0.3"] == pytest.approx(200 / 3) and metrics["R@1,IoU=0.5"] == pytest.approx(100 / 3)
    assert metrics["R@1,IoU=0.7"] == pytest.approx(100 / 3)
    assert metrics["R@5,IoU=0.3"] == 100.0 and metrics["R@5,IoU=0.5"] == pytest.approx(200 / 3)
    assert metrics["R@5,IoU=0.7"] == pytest.approx(200 / 3)
    assert metrics["mIoU"] == pytest.approx(100 * (0.8 + 0 + 0.4) / 3) and metrics["queries"] == 3
    with pytest.raises(DGLError, match="2 ranked lists for 3 true moments"):
        moment_metrics(predictions[:2], truths)


def test_rank_moments_applies_nms_over_all_videos() -> None:
    ids = ["a", "a", "a", "b"]
    spans = np.array([[0, 10], [5, 15], [10, 20], [0, 10]], np.float64)
    sims = np.array([[0.9, 0.895, 0.1, 0.5],  # a 0-15 merged, a 10-20 suppressed, then b
                     [0.1, 0.2, 0.3, 0.9]])  # b; then a 10-20, its touching neighbours suppressed
    ranked = rank_moments(sims, ids, spans)
    assert [[(h.id, h.start, h.end) for h in hits] for hits in ranked] == [[("a", 0, 15), ("b", 0, 10)],
                                                                          [("b", 0, 10), ("a", 10, 20)]]
    metrics = moment_metrics(ranked, [Moment("a", 0, 12), Moment("a", 10, 20)])
    assert metrics["R@1,IoU=0.7"] == 50.0 and metrics["R@5,IoU=0.7"] == 100.0  # 12/15 = 0.8; exact at rank 2


def test_rank_moments_and_search_moments_agree_with_nms_over_every_row(tmp_path) -> None:
    """Both stop fetching once the top k is settled (`settle_moments`): the result is NMS over all the rows, and
    the evaluation ranks the windows as `dgl query` does (ties by row)."""
    rng = np.random.default_rng(0)
    angles = np.round(rng.uniform(0, 0.3, 300), 3)  # repeated scores: ties broken by row
    rows = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    ids = [f"v{n % 7}" for n in range(300)]
    spans = np.array([[(n // 7) * 2.0, (n // 7) * 2.0 + 3.0] for n in range(300)], np.float64)  # overlapping
    paths = StorePaths.of(tmp_path / "emb.npy")
    write_set(paths, [rows], ids, dim=2, dtype=np.float32, spans=spans,
              fields={"model_fingerprint": "x", "settings": {"segments": {"window": 3.0, "stride": 2.0,
                                                                          "scenes": None}}})
    query = np.array([[1.0, 0.0]], np.float32)
    sims = query @ rows.T  # (1, N)
    every = [Hit(0, float(sims[0, n]), int(n), ids[n], *spans[n]) for n in np.lexsort((np.arange(300), -sims[0]))]
    for k in (1, 5, 20):
        expected = [(rank, row, video, start, end) for rank, _, row, video, start, end in _nms(*every, k=k)]
        assert [(h.rank, h.row, h.id, h.start, h.end) for h in rank_moments(sims, ids, spans, k)[0]] == expected
        found = search_moments(ExactIndex(open_store(paths.emb)), query, k)[0]
        assert [(h.rank, h.row, h.id, h.start, h.end) for h in found] == expected

