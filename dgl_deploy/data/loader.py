"""Parallel video loading: decode many files in worker processes, yield them in input order.

`iter_video_batches` (T frames per file): `workers` threads each drive one `DecodeProcess` (a crash-isolated
decoder with a per-file time limit). At most `batch_size * (prefetch + 1)` files are in flight or
decoded-but-unconsumed, so decoding overlaps with the consumer while memory stays bounded. A file that fails
becomes a `VideoFailure` (path + reason) in the next yielded batch; loading goes on.

`iter_videos` gives the same one file at a time (a `DecodedVideo` or a `VideoFailure` each, in input order), each
as soon as it is decoded: no batch to wait for, no batch copy.

`iter_window_groups` (T frames per window of each file, `dgl embed --window`): `workers` threads each stream
one file's windows from a `WindowDecodeProcess` (each frame decoded once per file, a time limit per group of
windows); each file in flight holds at most `GROUPS_AHEAD` decoded groups, so memory stays bounded whatever
the length of the files.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dgl_deploy.data.frame_cache import FrameCache
from dgl_deploy.data.frame_request import FrameRequest
from dgl_deploy.data.sampling import DEFAULT_SAMPLING, Sampling
from dgl_deploy.data.video import DEFAULT_TIMEOUT_S, DecodeProcess, VideoError, decode_frames
from dgl_deploy.data.window_decode import MAX_GROUP_FRAMES, WindowDecodeProcess, WindowStacks
from dgl_deploy.data.windows import Segmentation

GROUPS_AHEAD = 2  # decoded groups of windows waiting per file in flight
PREFETCH_BATCHES = 2  # whole files: batches decoded ahead of the one the consumer takes


@dataclass(frozen=True)
class VideoFailure:
    """An input item that could not be decoded."""

    index: int  # position in the `items` passed to the loader
    path: Path
    reason: str


@dataclass
class VideoBatch:
    """Decoded items in input order. Only the last batch may have B = 0 (trailing failures only)."""

    indices: list[int]  # positions in `items` of the rows of `frames`
    frames: np.ndarray  # (B, T, S, S, 3) uint8
    failures: list[VideoFailure] = field(default_factory=list)  # failed items since the previous batch


def _request(item: Any, num_frames: int, image_size: int, sampling: Sampling) -> FrameRequest:
    """What to decode of one item: a path (str/Path) or any object with `.path` and optional `.segment` (e.g.
    datasets.VideoItem)."""
    if isinstance(item, (str, Path)):
        return FrameRequest(Path(item), num_frames, image_size, None, sampling)
    return FrameRequest(Path(item.path), num_frames, image_size, getattr(item, "segment", None), sampling)


class _Decoders:
    """A fixed set of decoders shared by the worker threads (checked out one per file)."""

    def __init__(self, count: int, isolate: bool) -> None:
        self._all = [DecodeProcess() for _ in range(count)] if isolate else []
        self._free: queue.Queue[DecodeProcess] = queue.Queue()
        for decoder in self._all:
            self._free.put(decoder)

    def decode(self, request: FrameRequest, timeout: float) -> np.ndarray:
        if not self._all:
            return decode_frames(request)
        decoder = self._free.get()
        try:
            return decoder.decode(request, timeout)
        finally:
            self._free.put(decoder)

    def close(self) -> None:
        for decoder in self._all:
            decoder.close()


def iter_video_batches(
    items: Sequence[Any],
    num_frames: int,
    image_size: int,
    batch_size: int,
    workers: int = 2,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    prefetch: int = PREFETCH_BATCHES,
    cache: FrameCache | None = None,
    isolate: bool = True,
    sampling: Sampling = DEFAULT_SAMPLING,
) -> Iterator[VideoBatch]:
    """Yield `VideoBatch`es of up to `batch_size` decoded items, in the order of `items`.

    items: paths or objects with `.path` / `.segment` (seconds). workers: decoding threads (each with
    its own subprocess when `isolate`; `isolate=False` decodes in-thread: faster start, but no time
    limit and a decoder segfault kills the caller). cache: read/write decoded frames there. sampling: which
    frames of each item (`data.sampling`).
    Closing the generator (break, exception, Ctrl-C) kills the decoders without waiting.
    """
    if batch_size < 1 or workers < 1:
        raise ValueError("batch_size and workers must be >= 1")
    decoded = _iter_decoded(items, num_frames, image_size, workers, _ahead(workers, batch_size, prefetch),
                            timeout=timeout, cache=cache, isolate=isolate, sampling=sampling)
    try:
        indices: list[int] = []
        frames: list[np.ndarray] = []
        failures: list[VideoFailure] = []
        for index, result in decoded:
            if isinstance(result, VideoFailure):
                failures.append(result)
            else:
                frames.append(result)
                indices.append(index)
            if len(indices) == batch_size:
                yield VideoBatch(indices, np.stack(frames), failures)
                indices, frames, failures = [], [], []
        if indices or failures:
            empty = np.zeros((0, num_frames, image_size, image_size, 3), np.uint8)
            yield VideoBatch(indices, np.stack(frames) if frames else empty, failures)
    finally:
        decoded.close()


def _ahead(workers: int, batch_size: int, prefetch: int) -> int:
    """Files decoding or decoded ahead of the consumer: the batch it takes and `prefetch` more."""
    return max(workers, batch_size * (prefetch + 1))


def _iter_decoded(items: Sequence[Any], num_frames: int, image_size: int, workers: int, window: int, *,
                  timeout: float, cache: FrameCache | None, isolate: bool, sampling: Sampling
                  ) -> Iterator[tuple[int, np.ndarray | VideoFailure]]:
    """(index, (T, S, S, 3) frames or the file's failure) for each item, in order, as soon as it is decoded,
    `window` files decoding or decoded ahead (`iter_video_batches` has the arguments). Closing the generator
    kills the decoders without waiting."""
    requests = [_request(item, num_frames, image_size, sampling) for item in items]
    decoders = _Decoders(workers, isolate)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="dgl-load")

    def load(index: int) -> np.ndarray:
        request = requests[index]
        if cache is not None and (hit := cache.get(request)) is not None:
            return hit
        frames = decoders.decode(request, timeout)  # (T, S, S, 3)
        if cache is not None:
            cache.put(request, frames)
        return frames

    pending: deque[tuple[int, Future[np.ndarray]]] = deque()
    upcoming = iter(range(len(requests)))

    def submit_next() -> None:
        index = next(upcoming, None)
        if index is not None:
            pending.append((index, pool.submit(load, index)))

    try:
        for _ in range(window):
            submit_next()
        while pending:
            index, future = pending.popleft()
            submit_next()  # keep the window full while the consumer works
            try:
                result: np.ndarray | VideoFailure = future.result()
            except VideoError as exc:
                result = VideoFailure(index, exc.path, exc.reason)
            yield index, result
    finally:
        for _, future in pending:
            future.cancel()
        pool.shutdown(wait=False, cancel_futures=True)
        decoders.close()


@dataclass(frozen=True)
class DecodedVideo:
    """One input file decoded whole: the T frames of its one row."""

    index: int  # position in the `items` passed to the loader
    frames: np.ndarray  # (T, S, S, 3) uint8


def iter_videos(items: Sequence[Any], num_frames: int, image_size: int, batch_size: int, workers: int = 2, *,
                timeout: float = DEFAULT_TIMEOUT_S, sampling: Sampling = DEFAULT_SAMPLING
                ) -> Iterator[DecodedVideo | VideoFailure]:
    """Each file's `DecodedVideo` or `VideoFailure`, in input order, as soon as it is decoded (`batch_size`
    sets how far decoding runs ahead, as in `iter_video_batches`). Closing the generator kills the decoders
    without waiting."""
    decoded = _iter_decoded(items, num_frames, image_size, workers, _ahead(workers, batch_size, PREFETCH_BATCHES),
                            timeout=timeout, cache=None, isolate=True, sampling=sampling)
    try:
        for index, result in decoded:
            yield result if isinstance(result, VideoFailure) else DecodedVideo(index, result)
    finally:
        decoded.close()


@dataclass(frozen=True)
class WindowGroup:
    """Consecutive windows of one input file (`stacks.last`: its final ones)."""

    index: int  # position in the `paths` passed to the loader
    stacks: WindowStacks


_END = object()  # a file's stream ended (its last group was queued)


def iter_window_groups(
    paths: Sequence[Path | str],
    segmentation: Segmentation,
    num_frames: int,
    image_size: int,
    workers: int = 2,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    max_frames: int = MAX_GROUP_FRAMES,
) -> Iterator[WindowGroup | VideoFailure]:
    """Every window of every file, in input order: a file's `WindowGroup`s, then the next file's. A file that
    fails yields a `VideoFailure` after the groups it already gave (the consumer drops those); loading goes on.
    `timeout` applies to each group. Closing the generator kills the decoders without waiting."""
    if workers < 1:
        raise ValueError("workers must be >= 1")
    decoders = [WindowDecodeProcess() for _ in range(workers)]
    free: queue.Queue[WindowDecodeProcess] = queue.Queue()
    for decoder in decoders:
        free.put(decoder)
    closing = threading.Event()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="dgl-windows")

    def produce(index: int, out: queue.Queue) -> None:
        decoder = free.get()
        try:
            for stacks in decoder.stream(paths[index], segmentation, num_frames, image_size, timeout, max_frames):
                if not _put(out, WindowGroup(index, stacks), closing):
                    return
            _put(out, _END, closing)
        except VideoError as exc:
            _put(out, VideoFailure(index, exc.path, exc.reason), closing)
        except BaseException as exc:  # e.g. a decoder that cannot start: the consumer raises it
            _put(out, exc, closing)
        finally:
            free.put(decoder)

    in_flight: deque[queue.Queue] = deque()
    upcoming = iter(range(len(paths)))

    def submit_next() -> None:
        index = next(upcoming, None)
        if index is not None:
            in_flight.append(queue.Queue(maxsize=GROUPS_AHEAD))
            pool.submit(produce, index, in_flight[-1])

    try:
        for _ in range(2 * workers):  # files run in submission order, so the one consumed next is always running
            submit_next()
        while in_flight:
            out = in_flight.popleft()
            submit_next()
            while (item := out.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, VideoFailure):
                    break
    finally:
        closing.set()
        pool.shutdown(wait=False, cancel_futures=True)
        for decoder in decoders:
            decoder.close()


def _put(out: queue.Queue, item: object, closing: threading.Event) -> bool:
    """Queue `item`, waiting for room unless the loader is closing (then False)."""
    while not closing.is_set():
        try:
            out.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False
