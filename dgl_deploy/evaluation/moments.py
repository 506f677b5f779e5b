"""Moment retrieval (text -> moment over a whole collection), measured as papers report it on Charades-STA and
ActivityNet Captions: `dgl eval --moments`.

Every caption has one true moment (video, start, end). Each video is cut into windows (`data.windows`), every
window embedded; a caption's predictions are its moments ranked over all videos' windows after temporal
non-maximum suppression (`retrieval.moments`, as `dgl query` ranks them).

    tIoU(a, b)       = |a ∩ b| / |a ∪ b| of two time spans (0 when they do not overlap)
    R@K,IoU=θ        = % of captions with a prediction among their top K that is of the true video and has
                       tIoU >= θ with the true span (K in MOMENT_RECALL_AT, θ in IOU_THRESHOLDS)
    mIoU             = mean over captions of the top-1 prediction's tIoU with the truth, in % (0 for a top-1
                       of another video)

Captions of videos that fail to decode are left out (reported, like the whole-video metrics).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from rich.table import Table

from dgl_deploy.data.datasets import RetrievalDataset
from dgl_deploy.data.loader import VideoFailure, iter_window_groups
from dgl_deploy.data.segments import Segment
from dgl_deploy.data.windows import Segmentation
from dgl_deploy.errors import DGLError
from dgl_deploy.retrieval.moments import MERGE_MARGIN, settle_moments
from dgl_deploy.retrieval.search import Hit, select
from dgl_deploy.retrieval.video_rows import encode_rows
from dgl_deploy.runtime.backends.base import Encoder, encode_texts

MOMENT_RECALL_AT = (1, 5)
IOU_THRESHOLDS = (0.3, 0.5, 0.7)


@dataclass(frozen=True)
class Moment:
    """A caption's true moment."""

    video: str  # the video's id (`VideoItem.video_id`)
    start: float  # seconds
    end: float


@dataclass
class WindowRows:
    """The embedded windows of a split: one row per window."""

    vectors: np.ndarray  # (N, E) float32, L2-normalised
    ids: list[str]  # (N,) video id of each row
    spans: np.ndarray  # (N, 2) float64 start, end in seconds
    failures: list[VideoFailure] = field(default_factory=list)  # videos left out (index = dataset.items index)


@dataclass
class MomentEvaluation:
    """`evaluate_moments`' result: the metrics and what they were computed from."""

    metrics: dict[str, float | int]  # `moment_metrics`
    captions: list[str]  # the captions scored (those of decodable videos)
    truths: list[Moment]  # each caption's true moment
    predictions: list[list[Hit]]  # each caption's top moments (`rank_moments`)
    rows: WindowRows  # the embedded windows


def temporal_iou(a: Segment, b: Segment) -> float:
    """Intersection over union of two (start, end) spans in seconds; 0 when they do not overlap."""
    inter = min(a[1], b[1]) - max(a[0], b[0])
    union = max(a[1], b[1]) - min(a[0], b[0])
    return max(0.0, inter) / union if union > 0 else 0.0


def rank_moments(sims: np.ndarray, ids: Sequence[str], spans: np.ndarray, k: int = max(MOMENT_RECALL_AT),
                 margin: float = MERGE_MARGIN) -> list[list[Hit]]:
    """Each caption's top-k moments after temporal NMS, from its (C, N) similarities to N windows (`ids` and
    `spans` of each window); windows are taken score descending, then row ascending, and fetched in rounds until
    settled, as `dgl query` does (`retrieval.moments.settle_moments`)."""
    def window(score: float, row: int) -> Hit:
        return Hit(0, float(score), int(row), ids[row], float(spans[row, 0]), float(spans[row, 1]))

    def fetch(captions: list[int], n: int) -> list[list[Hit]]:
        scores, rows = select(sims[captions], np.arange(sims.shape[1]), n)  # (P, n): each caption's best windows
        return [[window(*pair) for pair in zip(*best, strict=True)] for best in zip(scores, rows, strict=True)]

    return settle_moments(fetch, len(sims), sims.shape[1], k, margin=margin)


def moment_metrics(predictions: Sequence[Sequence[Hit]], truths: Sequence[Moment]) -> dict[str, float | int]:
    """R@K,IoU=θ and mIoU (%, definitions in the module docstring) of ranked moments against the true ones."""
    if len(predictions) != len(truths) or not truths:
        raise DGLError(f"moment metrics: {len(predictions)} ranked lists for {len(truths)} true moments "
                       "(need one per caption, at least one)")
    ious = np.zeros((len(truths), max(MOMENT_RECALL_AT)))  # (C, K): tIoU of each ranked moment, 0 if another video
    for c, (ranked, truth) in enumerate(zip(predictions, truths, strict=True)):
        for r, hit in enumerate(ranked[:ious.shape[1]]):
            if hit.id == truth.video:
                ious[c, r] = temporal_iou((hit.start, hit.end), (truth.start, truth.end))
    metrics: dict[str, float | int] = {}
    for k in MOMENT_RECALL_AT:
        for theta in IOU_THRESHOLDS:
            metrics[f"R@{k},IoU={theta}"] = float(100 * (ious[:, :k] >= theta - 1e-9).any(axis=1).mean())
    metrics["mIoU"] = float(100 * ious[:, 0].mean())
    metrics["queries"] = len(truths)
    return metrics


def embed_windows(encoder: Encoder, dataset: RetrievalDataset, segmentation: Segmentation, workers: int = 2,
                  batch_size: int = 16) -> WindowRows:
    """Every window of every video of `dataset` (`data.windows` with `segmentation`), embedded by `encoder`
    `batch_size` windows per call (`video_rows.encode_rows`); a video that fails to decode is left out whole. Rows
    are in the dataset's order whatever order the videos finish in (overlapping encoder calls), so ties in a
    search break the same way on every run."""
    vectors: list[np.ndarray] = []  # (W, E) per video
    spans: list[np.ndarray] = []  # (W, 2) per video
    ids: list[str] = []
    failures: list[VideoFailure] = []
    groups = iter_window_groups([item.path for item in dataset.items], segmentation, encoder.frames,
                                encoder.image_size, workers)
    finished = {done.index: done for done in encode_rows(groups, encoder.encode_videos, batch_size,
                                                           lanes=encoder.video_lanes)}
    for done in (finished[index] for index in sorted(finished)):
        if isinstance(done, VideoFailure):
            failures.append(done)
            continue
        vectors.append(done.vectors)
        spans.append(done.spans)
        ids += [dataset.items[done.index].video_id] * len(done.vectors)
    if not vectors:
        raise DGLError("no video of the split could be decoded: nothing to evaluate")
    return WindowRows(np.concatenate(vectors), ids, np.concatenate(spans), failures)


def evaluate_moments(encoder: Encoder, dataset: RetrievalDataset, segmentation: Segmentation,
                     workers: int = 2, batch_size: int = 16) -> MomentEvaluation:
    """Moment metrics of `encoder` on a split whose items have per-caption moments (`VideoItem.moments`);
    `rows.failures` are the videos left out with their captions."""
    truths = [(caption, Moment(item.video_id, start, end)) for item in dataset.items
              for caption, start, end in item.moments]
    if not truths:
        raise DGLError(f"{dataset.name}: the split has no caption with a start and end time: no moments to evaluate")
    rows = embed_windows(encoder, dataset, segmentation, workers, batch_size)
    kept = set(rows.ids)
    truths = [(caption, moment) for caption, moment in truths if moment.video in kept]
    captions, moments = [caption for caption, _ in truths], [moment for _, moment in truths]
    predictions = rank_moments(encode_texts(encoder, captions) @ rows.vectors.T, rows.ids, rows.spans)  # (C, N)
    return MomentEvaluation(moment_metrics(predictions, moments), captions, moments, predictions, rows)


def format_moment_table(metrics: dict[str, float | int], title: str = "Moment retrieval") -> Table:
    """A rich table: one column per R@K,IoU=θ, then mIoU and the number of captions."""
    table = Table(title=title)
    names = [f"R@{k},IoU={theta}" for k in MOMENT_RECALL_AT for theta in IOU_THRESHOLDS]
    for name in (*names, "mIoU", "queries"):
        table.add_column(name, justify="right")
    table.add_row(*(f"{metrics[name]:.1f}" for name in (*names, "mIoU")), str(metrics["queries"]))
    return table


__all__ = ["Moment", "WindowRows", "MomentEvaluation", "temporal_iou", "rank_moments", "moment_metrics", "embed_windows",
           "evaluate_moments", "format_moment_table", "MOMENT_RECALL_AT", "IOU_THRESHOLDS"]
