"""Training data: splits, a deterministic per-epoch order, one sampled caption per video, decoded step batches.

- Splits: training uses the kind's train split or the given annotation file. Model selection uses the kind's
  validation split (both from its `datasets.DATASETS` entry), never a test split. Without one, a
  deterministic slice of train is held out: the `max(2, ceil(fraction * N))` videos with the smallest
  sha256(video_id) (independent of the seed and of the file order; at least 2 so R@1 is not trivially 100).
- Order: epoch e visits the training videos in the order of torch's DistributedSampler(shuffle=True,
  seed=seed) at set_epoch(e), so it is a function of (seed, epoch) only; each rank gets its shard.
  Step s of an epoch always holds positions [s*B, (s+1)*B) of the rank's shard (B = per-rank batch),
  whatever fails to decode, so resuming at step s skips exactly the consumed batches.
- Captions: for videos with several captions, each step uses one caption per video, drawn uniformly by
  numpy's Generator([seed, epoch]) — the same caption for a video throughout an epoch.
- Frames: `cfg.frame_sampling` picks them (data.sampling), the same rule for training and validation.
- A video that fails to decode is left out of its batch (reported through `StepBatch.failures`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.data import DistributedSampler

from dgl_deploy.data.datasets import DATASETS, RetrievalDataset, VideoItem, load_dataset
from dgl_deploy.data.frame_cache import FrameCache
from dgl_deploy.data.loader import VideoFailure, iter_video_batches
from dgl_deploy.errors import DGLError
from dgl_deploy.training.config import TrainConfig

MIN_HOLDOUT = 2  # videos


@dataclass
class StepBatch:
    """The videos of one optimizer step on this rank that decoded, in order."""

    items: list[int]  # (B',) indices into the training dataset's items
    frames: np.ndarray  # (B', T, S, S, 3) uint8
    captions: list[str]  # (B',) the sampled caption of each video
    failures: list[VideoFailure] = field(default_factory=list)  # index = dataset item index


def load_splits(cfg: TrainConfig) -> tuple[RetrievalDataset, RetrievalDataset | None]:
    """(train, validation); validation is None when `val_fraction` is 0 and there is no validation split."""
    annotations = Path(cfg.annotations)
    split = cfg.split or (DATASETS[cfg.dataset].train_split if annotations.is_dir() else None)
    train = load_dataset(cfg.dataset, annotations, cfg.videos, split, skip_missing=cfg.skip_missing)
    val_split = cfg.val_split or (DATASETS[cfg.dataset].validation_split if annotations.is_dir() else None)
    if val_split is not None:
        if "test" in val_split:
            raise DGLError(f"{annotations}: validation split {val_split!r} is a test split; select models on val/train data")
        return train, load_dataset(cfg.dataset, annotations, cfg.videos, val_split, skip_missing=cfg.skip_missing)
    if cfg.val_fraction == 0:
        return train, None
    return holdout(train, cfg.val_fraction)


def holdout(dataset: RetrievalDataset, fraction: float) -> tuple[RetrievalDataset, RetrievalDataset]:
    """Split off the deterministic validation slice described in the module docstring."""
    count = max(MIN_HOLDOUT, math.ceil(fraction * len(dataset.items)))
    if len(dataset.items) - count < 2:
        raise DGLError(f"{dataset.name} train split has {len(dataset.items)} videos: too few to hold out "
                       f"{count} for validation (pass --val-fraction 0 or a validation split)")
    ranked = sorted(range(len(dataset.items)), key=lambda i: hashlib.sha256(dataset.items[i].video_id.encode()).digest())
    held = set(ranked[:count])
    train = [item for i, item in enumerate(dataset.items) if i not in held]
    val = [item for i, item in enumerate(dataset.items) if i in held]
    split = dataset.split or "train"
    return RetrievalDataset(dataset.name, split, train), RetrievalDataset(dataset.name, f"{split} (held-out {count})", val)


def data_fingerprint(items: list[VideoItem]) -> str:
    """Identity of a training set (ids and caption counts, in order): a resumed run must see the same one."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(f"{item.video_id}\0{len(item.captions)}\n".encode())
    return digest.hexdigest()[:16]


def epoch_order(num_videos: int, seed: int, epoch: int, rank: int = 0, world: int = 1) -> list[int]:
    """This rank's shard of the epoch's shuffled video indices (DistributedSampler's rule, padded)."""
    sampler = DistributedSampler(range(num_videos), num_replicas=world, rank=rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return list(sampler)


def steps_per_epoch(num_videos: int, batch_size: int, world: int = 1) -> int:
    """Optimizer steps per epoch for a global batch of `batch_size` videos over `world` ranks."""
    return math.ceil(math.ceil(num_videos / world) / (batch_size // world))


def caption_choice(dataset: RetrievalDataset, seed: int, epoch: int) -> np.ndarray:
    """(N,) int: the caption index each video uses during `epoch`."""
    counts = np.array([len(item.captions) for item in dataset.items])
    return (np.random.default_rng([seed, epoch]).random(len(counts)) * counts).astype(np.int64)


def iter_steps(
    dataset: RetrievalDataset,
    cfg: TrainConfig,
    image_size: int,
    epoch: int,
    start_step: int = 0,
    rank: int = 0,
    world: int = 1,
) -> Iterator[StepBatch]:
    """Decoded step batches of `epoch` from `start_step` on; decoding runs ahead of the consumer."""
    per_rank = cfg.batch_size // world
    order = epoch_order(len(dataset.items), cfg.seed, epoch, rank, world)[start_step * per_rank:]
    choice = caption_choice(dataset, cfg.seed, epoch)
    cache = FrameCache(cfg.frame_cache) if cfg.frame_cache else None
    stream = iter_video_batches([dataset.items[i] for i in order], cfg.frames, image_size, batch_size=1,
                                workers=cfg.workers, prefetch=2 * per_rank, cache=cache, sampling=cfg.frame_sampling)
    step = StepBatch([], [], [])  # frames are collected as a list, stacked when the step is complete
    for batch in stream:  # batch_size=1: each yields <= 1 video plus the failures before it, in order
        entries = [(f.index, f) for f in batch.failures] + list(zip(batch.indices, batch.frames, strict=False))
        for pos, entry in sorted(entries, key=lambda e: e[0]):
            if isinstance(entry, VideoFailure):
                step.failures.append(VideoFailure(order[pos], entry.path, entry.reason))
            else:
                step.items.append(order[pos])
                step.frames.append(entry)
                step.captions.append(dataset.items[order[pos]].captions[choice[order[pos]]])
            if (pos + 1) % per_rank == 0 or pos + 1 == len(order):
                yield _stacked(step, cfg.frames, image_size)
                step = StepBatch([], [], [])


def _stacked(step: StepBatch, frames: int, image_size: int) -> StepBatch:
    """`step` with its list of (T, S, S, 3) frames stacked to (B', T, S, S, 3) (B' may be 0)."""
    empty = np.zeros((0, frames, image_size, image_size, 3), np.uint8)
    step.frames = np.stack(step.frames) if step.frames else empty
    return step
