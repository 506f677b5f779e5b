"""Evaluate a model on a dataset split: embed captions and videos with any Encoder, then retrieval metrics.

Similarities are cosine (`text @ video.T` of L2-normalised embeddings), one row per caption and one
column per video; `caption_to_video` maps every caption to its video, so datasets with several captions
per video (MSR-VTT train, VATEX) are scored with the multi-caption protocol of `metrics`.
Videos that fail to decode are reported and left out *together with their captions* (the matrix
then only holds the decodable videos); the report says how many, so numbers are never silently
computed on a different gallery.

With a `segmentation` (`dgl eval --moments --window W`), each video is also cut into windows and the
moment-retrieval metrics of `evaluation.moments` are reported beside the whole-video ones (captions need
their own start/end times: Charades-STA, ActivityNet Captions).

Frames are picked by a frame-sampling mode (`data.sampling`: `uniform` or `reference`); `evaluate_model`
defaults to the one the model was trained with (`Encoder.frame_sampling`), so a released reference checkpoint is
evaluated on the reference's frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dgl_deploy.data.datasets import RetrievalDataset, load_dataset
from dgl_deploy.data.frame_cache import FrameCache
from dgl_deploy.data.loader import VideoFailure, iter_video_batches
from dgl_deploy.data.sampling import DEFAULT_SAMPLING, Sampling, check_sampling
from dgl_deploy.data.windows import Segmentation
from dgl_deploy.errors import DGLError
from dgl_deploy.evaluation.metrics import evaluate
from dgl_deploy.evaluation.moments import evaluate_moments
from dgl_deploy.evaluation.rerank import RerankMethod
from dgl_deploy.runtime.backends.base import Encoder, encode_texts
from dgl_deploy.runtime.backends.select import open_encoder

EXPORT_FILE_SUFFIXES = (".onnx", ".plan")  # files inside an export folder: not runnable on their own


@dataclass
class Embeddings:
    """Embeddings of one dataset split (only the videos that decoded, and their captions)."""

    text: np.ndarray  # (Nc, E) float32, L2-normalised
    video: np.ndarray  # (Nv, E) float32, L2-normalised
    caption_to_video: np.ndarray  # (Nc,) int64: row of `video` each caption describes
    video_items: list[int]  # (Nv,) index into dataset.items of each row of `video`
    failures: list[VideoFailure] = field(default_factory=list)  # videos left out (index = dataset.items index)


@dataclass
class ModelEvaluation:
    """`dgl eval --model` result: metrics plus what was evaluated."""

    metrics: dict[str, dict[str, float | int]]  # as returned by metrics.evaluate
    backend: str  # encoder.describe()
    num_videos: int  # videos scored
    num_captions: int  # captions scored
    failures: list[VideoFailure]  # videos (and their captions) left out
    frame_sampling: Sampling = DEFAULT_SAMPLING  # how frames were picked
    moments: dict[str, float | int] | None = None  # moment-retrieval metrics (`evaluation.moments`), with windows


def _embed_items(
    encoder: Encoder, dataset: RetrievalDataset, batch_size: int, workers: int, cache: FrameCache | None, sampling: Sampling
) -> tuple[np.ndarray, list[int], list[VideoFailure]]:
    """(Nv, E) embeddings of the decodable videos, their item indices, and the failures."""
    chunks: list[np.ndarray] = []
    decoded: list[int] = []
    failures: list[VideoFailure] = []
    for batch in iter_video_batches(dataset.items, encoder.frames, encoder.image_size, batch_size, workers, cache=cache,
                                    sampling=sampling):
        failures.extend(batch.failures)
        if batch.indices:
            chunks.append(encoder.encode_videos(batch.frames))  # (B, E)
            decoded.extend(batch.indices)
    video = np.concatenate(chunks) if chunks else np.zeros((0, encoder.embed_dim), np.float32)
    return video, decoded, failures


def embed_dataset(
    encoder: Encoder,
    dataset: RetrievalDataset,
    batch_size: int = 32,
    workers: int = 4,
    cache: FrameCache | None = None,
    sampling: Sampling = DEFAULT_SAMPLING,
) -> Embeddings:
    """Embed every decodable video of `dataset` (frames picked by `sampling`) and all captions of those videos."""
    video, decoded, failures = _embed_items(encoder, dataset, batch_size, workers, cache, check_sampling(sampling))
    captions = [caption for item in decoded for caption in dataset.items[item].captions]
    c2v = np.repeat(np.arange(len(decoded)), [len(dataset.items[item].captions) for item in decoded]).astype(np.int64)
    return Embeddings(encode_texts(encoder, captions), video, c2v, decoded, failures)


def similarity(embeddings: Embeddings) -> np.ndarray:
    """Cosine similarities (Nc, Nv) = text @ video.T."""
    if len(embeddings.video) == 0:
        raise DGLError("no video of the split could be decoded: nothing to evaluate")
    return embeddings.text @ embeddings.video.T


def evaluate_model(
    model: str | Path,
    kind: str,
    annotations: str | Path,
    videos: str | Path,
    split: str | None = None,
    *,
    backend: str = "auto",
    precision: str = "auto",
    device: str = "auto",
    batch_size: int = 32,
    workers: int = 4,
    skip_missing: bool = False,
    frame_sampling: str | None = None,
    rerank: RerankMethod | str | None = None,
    query_bank: np.ndarray | None = None,
    segmentation: Segmentation | None = None,
    **rerank_options: Any,
) -> ModelEvaluation:
    """Load a split, embed it with `model` (checkpoint or export folder) on `backend`, return its metrics.

    `frame_sampling` (None: the one the model was tuned on, `Encoder.frame_sampling`) picks the frames. `rerank`, `query_bank`
    and `rerank_options` are passed to `metrics.evaluate`; `segmentation` adds the moment metrics.
    """
    check_model_path(Path(model))
    chosen = None if frame_sampling is None else check_sampling(frame_sampling, "--frame-sampling")
    dataset = load_dataset(kind, annotations, videos, split, skip_missing=skip_missing)
    if not dataset.items:
        raise DGLError(f"{annotations}: the {kind} split {dataset.split or ''} has no videos")
    encoder = open_encoder(model, backend, device, precision)
    sampling = chosen or check_sampling(encoder.frame_sampling, f"{model}: recorded frame sampling")
    return evaluate_encoder(encoder, dataset, batch_size=batch_size, workers=workers, sampling=sampling, rerank=rerank,
                            query_bank=query_bank, segmentation=segmentation, **rerank_options)


def check_model_path(model: Path) -> None:
    """Refuse, before any video is read, a graph file of an export (.onnx, .plan) given instead of its folder."""
    if model.is_file() and model.suffix.lower() in EXPORT_FILE_SUFFIXES:
        folder = f" ({model.parent} is one: pass it)" if (model.parent / "manifest.json").is_file() else ""
        raise DGLError(f"{model}: the model must be a checkpoint file (.safetensors/.pth) or an export folder "
                       f"containing manifest.json{folder}; a {model.suffix} file alone is not enough")


def evaluate_encoder(
    encoder: Encoder,
    dataset: RetrievalDataset,
    *,
    batch_size: int = 32,
    workers: int = 4,
    sampling: Sampling = DEFAULT_SAMPLING,
    rerank: RerankMethod | str | None = None,
    query_bank: np.ndarray | None = None,
    segmentation: Segmentation | None = None,
    **rerank_options: Any,
) -> ModelEvaluation:
    """Metrics of any Encoder (a DGL backend, or a baseline such as mean-pooled CLIP) on a loaded split; with a
    `segmentation`, the moment metrics too (videos left out of either are reported once)."""
    embeddings = embed_dataset(encoder, dataset, batch_size, workers, sampling=sampling)
    sims = similarity(embeddings)
    metrics = evaluate(sims, embeddings.caption_to_video, rerank, query_bank, **rerank_options)
    report = ModelEvaluation(metrics, encoder.describe(), sims.shape[1], sims.shape[0], embeddings.failures, sampling)
    if segmentation is not None:
        moments = evaluate_moments(encoder, dataset, segmentation, workers, batch_size)
        known = {failure.path for failure in report.failures}
        report.moments = moments.metrics
        report.failures += [failure for failure in moments.rows.failures if failure.path not in known]
    return report
