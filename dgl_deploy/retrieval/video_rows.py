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
  depend on where a killed job resumed).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator
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
                ends: Collection[int] = ()) -> Iterator[VideoRows | VideoFailure]:
    """Each video's rows (or its failure) from decoded pieces in file order, encoded `batch_size` rows per call
    of `encode` ((B, T, S, S, 3) uint8 -> (B, E)); the batch is cut short where a video in `ends` ends."""
    from dgl_deploy.data.loader import VideoFailure

    collector = RowCollector()
    waiting: list[PendingRow] = []  # rows for the next encoder call
    for piece in pieces:
        if isinstance(piece, VideoFailure):
            waiting = [row for row in waiting if row.place.index != piece.index]
            collector.fail(piece)
        else:
            for row in rows_of(piece):
                waiting.append(row)
                if len(waiting) == batch_size:
                    _encode(encode, waiting, collector)
                    waiting = []
        if waiting and piece.index in ends and _last(piece):
            _encode(encode, waiting, collector)
            waiting = []
        yield from collector.finished()
    if waiting:
        _encode(encode, waiting, collector)
    yield from collector.finished()


def _last(piece: Piece) -> bool:
    """Whether `piece` ends its video."""
    stacks = getattr(piece, "stacks", None)
    return stacks is None or stacks.last


def _encode(encode: Callable[[np.ndarray], np.ndarray], rows: list[PendingRow], collector: RowCollector) -> None:
    vectors = encode(np.stack([row.frames for row in rows]))  # (B, T, S, S, 3) -> (B, E)
    for row, vector in zip(rows, vectors, strict=True):
        collector.add(row.place, vector)


__all__ = ["RowPlace", "PendingRow", "VideoRows", "RowCollector", "rows_of", "encode_rows"]
