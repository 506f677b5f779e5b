"""video_rows: decoded pieces -> encoded rows per video (batches of batch_size rows, cut at `ends`, a failed
video's rows dropped before and after encoding), the same rows from an encoder with lanes (calls overlapping on a
thread pool, pieces sent as decoded, a failure while its earlier rows are still being encoded), and rows coming
back in any order (Ray) put together per video."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from dgl_deploy.data.loader import DecodedVideo, VideoFailure, WindowGroup
from dgl_deploy.data.window_decode import WindowStacks
from dgl_deploy.retrieval.video_rows import RowCollector, RowPlace, VideoRows, encode_rows, rows_of

T, S = 2, 4


def _group(index: int, first: int, count: int, total: int) -> WindowGroup:
    """Windows first .. first + count - 1 of `total`, each frame filled with its window number."""
    frames = np.stack([np.full((T, S, S, 3), first + g, np.uint8) for g in range(count)])  # (G, T, S, S, 3)
    spans = np.array([[w, w + 1.0] for w in range(first, first + count)])  # (G, 2)
    return WindowGroup(index, WindowStacks(spans, frames, first, total))


class _Encoder:
    """Rows (B, 2): the window number and the video's marker; records each call's size."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        self.calls.append(len(frames))
        return np.stack([frames[:, 0, 0, 0, 0], frames[:, 0, 0, 0, 1]], axis=1).astype(np.float32)  # (B, 2)


def test_windows_become_rows_per_video_and_a_failure_drops_its_rows() -> None:
    pieces = [_group(0, 0, 2, 3), _group(0, 2, 1, 3),  # video 0: 3 windows in two groups
              _group(1, 0, 2, 4), VideoFailure(1, Path("b.mp4"), "corrupt"),  # video 1 fails after 2 windows
              _group(2, 0, 1, 1)]
    encoder = _Encoder()
    done = list(encode_rows(pieces, encoder, batch_size=2))
    assert [type(d).__name__ for d in done] == ["VideoRows", "VideoFailure", "VideoRows"]
    first, failure, last = done
    assert first.index == 0 and first.vectors[:, 0].tolist() == [0, 1, 2] and first.spans.tolist() == [[0, 1], [1, 2], [2, 3]]
    assert failure.reason == "corrupt" and last.index == 2 and last.vectors.shape == (1, 2)
    assert encoder.calls == [2, 2, 1]  # video 1's second window was never encoded; the rest fill batches of 2


def test_a_batch_stops_at_the_end_of_a_video_in_ends() -> None:
    pieces = [DecodedVideo(i, np.full((T, S, S, 3), i, np.uint8)) for i in range(5)]
    encoder = _Encoder()
    done = list(encode_rows(pieces, encoder, batch_size=4, ends={1, 4}))
    assert encoder.calls == [2, 3]  # chunks {0, 1} and {2, 3, 4}: no batch straddles them
    assert [d.index for d in done] == [0, 1, 2, 3, 4] and all(d.spans is None for d in done)


class _SlowEncoder(_Encoder):
    """An `_Encoder` whose calls take a while and may overlap (lanes); records the most running at once."""

    def __init__(self) -> None:
        super().__init__()
        self._lock, self._running, self.most = threading.Lock(), 0, 0

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        with self._lock:
            self._running += 1
            self.most = max(self.most, self._running)
        time.sleep(0.02 * len(frames))
        with self._lock:
            self._running -= 1
        return super().__call__(frames)


def _summary(done: list) -> list:
    return [(d.index, type(d).__name__, d.vectors.tolist() if isinstance(d, VideoRows) else d.reason) for d in done]


def test_lanes_overlap_calls_and_give_the_same_rows() -> None:
    pieces = [_group(0, 0, 3, 5), _group(0, 3, 2, 5), DecodedVideo(1, np.full((T, S, S, 3), 9, np.uint8)),
              _group(2, 0, 4, 6), VideoFailure(2, Path("c.mp4"), "truncated"),  # fails with 4 windows in flight
              _group(3, 0, 1, 1), DecodedVideo(4, np.full((T, S, S, 3), 7, np.uint8)), _group(5, 0, 2, 2)]
    plain, lanes = _Encoder(), _SlowEncoder()
    expected = _summary(list(encode_rows(pieces, plain, batch_size=4)))
    assert _summary(list(encode_rows(pieces, lanes, batch_size=4, lanes=2))) == expected
    assert lanes.most >= 2  # calls ran side by side
    assert sum(lanes.calls) == 3 + 2 + 1 + 4 + 1 + 1 + 2  # every row once (video 2's were sent before it failed)


def test_rows_of_a_group_and_of_a_whole_video() -> None:
    rows = rows_of(_group(3, 4, 2, 9))
    assert [r.place for r in rows] == [RowPlace(3, 4, 9, (4.0, 5.0)), RowPlace(3, 5, 9, (5.0, 6.0))]
    assert rows_of(DecodedVideo(1, np.zeros((T, S, S, 3), np.uint8)))[0].place == RowPlace(1, 0, 1, None)


def test_rows_back_in_any_order_wait_for_their_video() -> None:
    collector = RowCollector()
    collector.add(RowPlace(0, 1, 2, (1.0, 2.0)), np.array([1.0]))
    collector.fail(VideoFailure(1, Path("b.mp4"), "timed out"), sent=1)  # one row of it is still on its way
    assert collector.finished() == []
    collector.add(RowPlace(1, 0, 3, (0.0, 1.0)), np.array([9.0]))
    collector.add(RowPlace(0, 0, 2, (0.0, 1.0), timed=False), np.array([0.0]))
    first, failed = collector.finished()
    assert isinstance(first, VideoRows) and first.vectors[:, 0].tolist() == [0, 1] and not first.timed
    assert isinstance(failed, VideoFailure) and failed.index == 1 and collector.finished() == []
