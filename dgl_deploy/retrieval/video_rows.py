"""Embedding rows from decoded videos: the one place where decoded window groups (or whole videos) become rows,
one per window, gathered per video, and where a video that fails loses all its rows. `dgl embed` (on this machine
and on Ray) and `dgl eval --moments` all go through it.

- `rows_of`: the rows a decoded piece gives (`loader.WindowGroup`: one per window, with its span;
  `loader.DecodedVideo`: one for the whole file, no span), each waiting for the encoder as a `PendingRow` that
  knows its place (`RowPlace`: video, window, the video's row count, span).
- `RowCollector`: encoded rows, in any order, gathered per video; a video comes out once all its rows are in
  (`VideoRows`, window order), or as its `VideoFailure` once the rows sent before the failure are back (dropped).
- `encode_rows`: the encoder over a stream of decoded pieces in file order (`loader.iter_window_groups`,
  `loader.iter_videos`), `batch_size` rows per call; a failure's rows still waiting are never encoded, and a batch
  never straddles the end of a video named in `ends` (`dgl embed`: the last video of each chunk, so batches do not
  depend on where a killed job resumed). An encoder that runs videos side by side, each alone (`lanes` > 0: CPU
  lanes, `Encoder.video_lanes`), gets its calls from a thread pool while the next rows are decoded: rows go out
  as soon as less than a batch is in flight (so the lanes neither wait for a full batch at the start nor for a
  batch's last video at its end), at most about two batches at a time. Its rows do not depend on how they were
  batched; every other encoder gets whole batches, one call at a time.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from dgl_deploy.data.segments import Segment

if TYPE_CHECKING:  # the loader (PyAV) is imported when rows are made, not with the CLI
    from dgl_deploy.data.loader import DecodedVideo, VideoFailure, WindowGroup

    Piece = WindowGroup | DecodedVideo | VideoFailure


@dataclass(frozen=True)
class RowPlace:
    """Where a row belongs."""

    index: int  # its video's position in the decoded list
    window: int  # the row's number within its video (0 for a whole video)
    total: int  # rows of its video
    span: Segment | None  # (start, end) seconds of the window; None for a whole video
    timed: bool = True  # span from the stream's timestamps (False: frame index / average fps)


@dataclass(frozen=True)
class PendingRow:
    """One row waiting for the encoder."""

    place: RowPlace  # its video and window
    frames: np.ndarray  # (T, S, S, 3) uint8


@dataclass(frozen=True)
class VideoRows:
    """The rows of one video, complete, in window order."""

    index: int  # the video's position in the decoded list
    vectors: np.ndarray  # (W, E) float32, one per window (W = 1 for a whole video)
    spans: np.ndarray | None  # (W, 2) float64 start, end seconds; None for a whole video
    timed: bool = True  # spans from the stream's timestamps (False: frame index / average fps)


def rows_of(piece: WindowGroup | DecodedVideo) -> list[PendingRow]:
    """The rows of a decoded piece: one per window of a group, or one for a whole file."""
    from dgl_deploy.data.loader import DecodedVideo

    if isinstance(piece, DecodedVideo):
        return [PendingRow(RowPlace(piece.index, 0, 1, None), piece.frames)]
    stacks = piece.stacks
    return [PendingRow(RowPlace(piece.index, stacks.first + g, stacks.total, (float(span[0]), float(span[1])),
                                stacks.timed), frames)
            for g, (frames, span) in enumerate(zip(stacks.frames, stacks.spans, strict=True))]


@dataclass
class _Video:
    """The encoded rows of one video so far."""

    expected: int  # rows to wait for: all of them, or those sent before its failure
    rows: dict[int, tuple[np.ndarray, Segment | None]] = field(default_factory=dict)  # window -> ((E,) vector, span)
    timed: bool = True
    failure: VideoFailure | None = None

    @property
    def complete(self) -> bool:
        return len(self.rows) >= self.expected


class RowCollector:
    """Encoded rows gathered per video (module docstring); `finished` hands out the complete videos."""

    def __init__(self) -> None:
        self._videos: dict[int, _Video] = {}

    def add(self, place: RowPlace, vector: np.ndarray) -> None:
        """The (E,) vector of the row at `place`."""
        video = self._videos.setdefault(place.index, _Video(place.total))
        video.rows[place.window] = (vector, place.span)
        video.timed = video.timed and place.timed

    def fail(self, failure: VideoFailure, sent: int | None = None) -> None:
        """`failure` ends its video, whose rows are dropped; `sent`: rows of it encoded before the failure and
        still to come back (None: they are all in)."""
        video = self._videos.setdefault(failure.index, _Video(0))
        video.expected = len(video.rows) if sent is None else sent
        video.failure = failure

    def finished(self) -> list[VideoRows | VideoFailure]:
        """The videos complete since the last call, by position."""
        done = sorted(index for index, video in self._videos.items() if video.complete)
        return [self._result(index, self._videos.pop(index)) for index in done]

    @staticmethod
    def _result(index: int, video: _Video) -> VideoRows | VideoFailure:
        if video.failure is not None:
            return video.failure
        windows = sorted(video.rows)
        spans = [video.rows[w][1] for w in windows]
        return VideoRows(index, np.stack([video.rows[w][0] for w in windows]),  # (W, E)
                         None if spans[0] is None else np.array(spans, np.float64), video.timed)  # (W, 2)


def encode_rows(pieces: Iterable[Piece], encode: Callable[[np.ndarray], np.ndarray], batch_size: int,
                ends: Collection[int] = (), lanes: int = 0) -> Iterator[VideoRows | VideoFailure]:
    """Each video's rows (or its failure) as the video completes (with `lanes`, not always in file order), from
    decoded pieces in file order, encoded `batch_size` rows per call of `encode` ((B, T, S, S, 3) uint8 -> (B, E));
    the batch is cut short where a video in `ends` ends. `lanes`: the encoder's side-by-side lanes (module
    docstring; 0: one whole batch at a time)."""
    from dgl_deploy.data.loader import VideoFailure

    collector = RowCollector()
    calls = _Calls(encode, collector, batch_size, lanes)
    waiting: list[PendingRow] = []  # rows for the next encoder call
    try:
        for piece in pieces:
            if isinstance(piece, VideoFailure):
                waiting = [row for row in waiting if row.place.index != piece.index]
                collector.fail(piece, calls.sent[piece.index])
            elif calls.whole(rows := rows_of(piece)):
                calls.send(rows, _frames_of(piece))
            else:
                for row in rows:
                    waiting.append(row)
                    if len(waiting) == batch_size:
                        calls.send(waiting)
                        waiting = []
            if waiting and (piece.index in ends and _last(piece) or calls.hungry(len(waiting))):
                calls.send(waiting)
                waiting = []
            calls.collect()
            yield from collector.finished()
        if waiting:
            calls.send(waiting)
        calls.collect(everything=True)
        yield from collector.finished()
    finally:
        calls.close()


def _frames_of(piece: WindowGroup | DecodedVideo) -> np.ndarray:
    """The frames of a piece's rows, in their order, as decoded (no copy): (R, T, S, S, 3)."""
    stacks = getattr(piece, "stacks", None)
    return piece.frames[None] if stacks is None else stacks.frames


def _last(piece: Piece) -> bool:
    """Whether `piece` ends its video."""
    stacks = getattr(piece, "stacks", None)
    return stacks is None or stacks.last


class _Calls:
    """Encoder calls (`encode_rows`): made here, one at a time, or with `lanes` from a thread pool, at most two
    batches' rows in flight (the lanes go from one call's videos to the next without waiting)."""

    def __init__(self, encode: Callable[[np.ndarray], np.ndarray], collector: RowCollector, batch_size: int,
                 lanes: int) -> None:
        self._encode, self._collector, self._batch, self._lanes = encode, collector, batch_size, lanes
        self._pool = ThreadPoolExecutor(batch_size, "dgl-encode") if lanes else None
        self._running: deque[tuple[list[PendingRow], Future[np.ndarray]]] = deque()  # oldest first
        self._in_flight = 0  # rows sent and not collected
        self.sent: Counter[int] = Counter()  # rows sent to the encoder, by video

    def whole(self, rows: list[PendingRow]) -> bool:
        """Whether a piece's `rows` go as one call of their own, their frames not copied: with lanes, when they fill
        every lane and no more than a batch."""
        return self._pool is not None and min(self._lanes, self._batch) <= len(rows) <= self._batch

    def hungry(self, waiting: int) -> bool:
        """Whether `waiting` rows should go now: the lanes would soon run dry (and they fill every lane)."""
        return self._pool is not None and self._in_flight < self._batch and waiting >= min(self._lanes, self._batch)

    def send(self, rows: list[PendingRow], frames: np.ndarray | None = None) -> None:
        """One call for `rows` (`frames`: theirs, already stacked); with lanes it first waits until at most two
        batches are in flight with it."""
        for row in rows:
            self.sent[row.place.index] += 1
        frames = np.stack([row.frames for row in rows]) if frames is None else frames  # (B, T, S, S, 3)
        if self._pool is None:
            self._add(rows, self._encode(frames))
            return
        while self._running and self._in_flight + len(rows) > 2 * self._batch:  # one batch queued behind one
            self._add(*self._take())
        self._running.append((rows, self._pool.submit(self._encode, frames)))
        self._in_flight += len(rows)

    def collect(self, everything: bool = False) -> None:
        """The rows of the calls done (`everything`: of every call, waiting for them)."""
        while self._running and (everything or self._running[0][1].done()):
            self._add(*self._take())

    def _take(self) -> tuple[list[PendingRow], np.ndarray]:
        rows, future = self._running.popleft()
        self._in_flight -= len(rows)
        return rows, future.result()

    def _add(self, rows: list[PendingRow], vectors: np.ndarray) -> None:
        for row, vector in zip(rows, vectors, strict=True):
            self._collector.add(row.place, vector)

    def close(self) -> None:
        """Wait for the calls still running (an error or an abandoned stream), then stop the pool."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


__all__ = ["RowPlace", "PendingRow", "VideoRows", "RowCollector", "rows_of", "encode_rows"]
