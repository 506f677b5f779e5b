"""Decode every window of one video in one pass (`dgl embed --window`): T frames per window, each frame decoded
and converted once however many windows share it.

`decode_windows` opens the file once (`decoder.VideoFile`), places its windows on the stream's clock
(`data.windows` over the timeline's duration; shots by `data.scenes` first with `--scenes`), samples each
window's T frames uniformly in time (`sampling.uniform_indices` with the window as segment), then decodes the
sorted union of those frames in one forward pass through the file: every packet once, only the wanted frames
converted and resized, a seek over any stretch with no wanted frame that a key frame starts. A window is
complete once the pass reaches its last frame; complete windows go out in groups of `max_frames // T`,
assembled as (G, T, S, S, 3) stacks from the shared frames, and frames that no later window needs are dropped.
So no frame is decoded twice (overlapping windows share theirs, a long GOP is never decoded again from its key
frame), and the process holds one group's frames and one decoded frame at a time: memory is flat in the file's
length.

Rows follow the frames the stream holds: a window whose sampled frames are those of the window before it (a
frame held longer than the stride, or a header that claims more time than the stream has) is merged into that
window, so a file never gives more rows than it has frames.

`WindowDecodeProcess` runs it in a crash-isolated subprocess that streams the groups back; the time limit
applies to each group (and to each piece of shot detection), so a long file gets as much time as it needs while
a hang or a crash is still caught.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dgl_deploy.data.decoder import Timeline, VideoError, VideoFile, check_file, decoder_message
from dgl_deploy.data.sampling import TIME_EPS, uniform_indices
from dgl_deploy.data.shared_frames import FrameWriter, frame_bytes
from dgl_deploy.data.windows import Segmentation, windows_of
from dgl_deploy.data.worker import Connection, WorkerProcess, worker_loop
from dgl_deploy.errors import DGLError

MAX_GROUP_FRAMES = 128  # frames (windows x T) sent at a time


@dataclass(frozen=True)
class WindowStacks:
    """Consecutive windows of one file: windows first .. first + G - 1 of its `total`."""

    spans: np.ndarray | None  # (G, 2) float64: start, end in seconds (None: the whole file, one group)
    frames: np.ndarray  # (G, T, S, S, 3) uint8
    first: int
    total: int
    timed: bool = True  # times come from the stream's timestamps (False: frame index / average fps)

    @property
    def last(self) -> bool:
        """Whether these are the file's last windows."""
        return self.first + len(self.frames) == self.total


def _nothing() -> None:
    pass


def windows_per_group(max_frames: int, num_frames: int) -> int:
    """How many windows of `num_frames` frames go out together (at least one)."""
    return max(1, max_frames // num_frames)


def plan_windows(timeline: Timeline, segmentation: Segmentation, num_frames: int,
                 cuts: list[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The windows of a file, (W, 2) start, end seconds, and each one's frame indices, (W, T) int64 (module
    docstring). A window showing the same stretch of frames as the one before (same first and last frame, so the
    same samples) is merged into it: W <= 2 N for N frames, whatever the timestamps claim."""
    times = timeline.times
    spans = windows_of(timeline.duration, segmentation, cuts)  # (W, 2)
    first = np.clip(np.searchsorted(times, spans[:, 0] + TIME_EPS, "right") - 1, 0, len(times) - 1)  # (W,)
    last = np.maximum(np.clip(np.searchsorted(times, spans[:, 1] - TIME_EPS, "left") - 1, 0, len(times) - 1), first)
    new = np.ones(len(spans), bool)
    new[1:] = (first[1:] != first[:-1]) | (last[1:] != last[:-1])
    starts = np.flatnonzero(new)
    merged = np.stack([spans[starts, 0], spans[np.append(starts[1:] - 1, len(spans) - 1), 1]], axis=1)  # (W', 2)
    indices = np.stack([uniform_indices(times, num_frames, (start, end)) for start, end in merged])  # (W', T)
    return merged, indices


def decode_windows(path: Path | str, segmentation: Segmentation, num_frames: int, image_size: int,
                   max_frames: int = MAX_GROUP_FRAMES, progress: Callable[[], None] = _nothing) -> Iterator[WindowStacks]:
    """Every window of `path`, in order, in groups of at most `max_frames // T` windows (see the module
    docstring); runs in this process, no time limit. `progress` is called during shot detection. Raises
    VideoError."""
    path = Path(path)
    with VideoFile(path) as video:
        timeline = video.timeline
        cuts = _cuts(path, timeline, segmentation, progress) if segmentation.scenes else None
        try:
            spans, indices = plan_windows(timeline, segmentation, num_frames, cuts)
        except DGLError as exc:  # more windows than any file should need: its timestamps claim too much
            raise VideoError(path, f"its timestamps span {timeline.duration:g} s for {len(timeline)} frames: {exc}") from None
        still_needed = np.minimum.accumulate(indices.min(axis=1)[::-1])[::-1]  # (W,) lowest frame of windows w..
        size = windows_per_group(max_frames, num_frames)
        frames: dict[int, np.ndarray] = {}  # frame index -> (S, S, 3), decoded and still needed
        ready: list[int] = []  # complete windows not sent yet
        following = 0  # the first window not complete yet
        for index, frame in video.frames(np.unique(indices), image_size):
            frames[index] = frame
            while following < len(spans) and indices[following].max() <= index:
                ready.append(following)
                following += 1
                if len(ready) == size or following == len(spans):
                    yield _group(ready, spans, indices, frames, timeline.from_stream)
                    lowest = int(still_needed[following]) if following < len(spans) else len(timeline)
                    frames = {i: kept for i, kept in frames.items() if i >= lowest}
                    ready = []


def _group(windows: list[int], spans: np.ndarray, indices: np.ndarray, frames: dict[int, np.ndarray],
           timed: bool) -> WindowStacks:
    """The stacks of `windows` (consecutive) assembled from the decoded frames."""
    stacks = np.stack([np.stack([frames[int(i)] for i in indices[w]]) for w in windows])  # (G, T, S, S, 3)
    return WindowStacks(spans[windows[0]:windows[-1] + 1].copy(), stacks, windows[0], len(spans), timed)


def _cuts(path: Path, timeline: Timeline, segmentation: Segmentation, progress: Callable[[], None]) -> list[float]:
    """Shot cut times on the stream's clock: PySceneDetect finds the frames, the timeline says when they show."""
    from dgl_deploy.data.scenes import detect_cuts

    try:
        cut_frames = detect_cuts(path, segmentation.scene_threshold, progress)
    except Exception as exc:  # PySceneDetect / PyAV errors on a file the timeline could read
        raise VideoError(path, f"shot detection failed ({type(exc).__name__}: {decoder_message(exc)})") from None
    return [float(timeline.times[i]) for i in cut_frames if 0 < i < len(timeline)]


def _serve(conn: Connection, freed: Connection) -> None:
    """Worker: (path, segmentation, T, S, max_frames) -> ('group', (frames, spans, first, total, timed)) per
    group, the `WindowStacks` fields with its frames put through the writer (('progress', None) during shot
    detection), then ('done', None); or ('error', reason)."""

    def handle(request: tuple, writer: FrameWriter) -> None:
        for stacks in decode_windows(*request, progress=lambda: conn.send(("progress", None))):
            conn.send(("group", (writer.put(stacks.frames), stacks.spans, stacks.first, stacks.total, stacks.timed)))
        conn.send(("done", None))

    worker_loop(conn, freed, handle)


class WindowDecodeProcess(WorkerProcess):
    """One decoding subprocess streaming the windows of a file (`stream`); the time limit applies per group.
    After a hang or a crash the process is restarted by the next `stream`. Not thread-safe: one per thread;
    `close` kills the process (and unblocks a pending `stream`)."""

    def __init__(self) -> None:
        super().__init__(_serve, __name__, "dgl-decode-windows")

    @staticmethod
    def _receive(conn: Connection) -> tuple[str, Any]:
        try:
            return conn.recv()
        except (EOFError, OSError):
            return "crashed", None

    def stream(self, path: Path | str, segmentation: Segmentation, num_frames: int, image_size: int,
               timeout: float, max_frames: int = MAX_GROUP_FRAMES) -> Iterator[WindowStacks]:
        """Like `decode_windows`, in the subprocess; VideoError when a group takes longer than `timeout`
        seconds, the process crashes, or the file is bad. Abandoning the iterator early kills the process."""
        path = Path(path)
        check_file(path)
        group_bytes = frame_bytes(windows_per_group(max_frames, num_frames) * num_frames, image_size)
        finished = False
        try:
            conn = self.send((str(path), segmentation, num_frames, image_size, max_frames), group_bytes)
            while not finished:
                if not conn.poll(timeout):
                    raise VideoError(path, f"decoding timed out (a group of windows took over {timeout:g} s)")
                status, payload = self._receive(conn)
                if status == "crashed":
                    raise VideoError(path, f"decoder process crashed (exit code {self.stop()})")
                finished = status in ("done", "error")  # the worker is free again
                if status == "error":
                    raise VideoError(path, payload)
                if status == "group":
                    frames, spans, first, total, timed = payload
                    yield WindowStacks(spans, self.frames.take(frames), first, total, timed)
        except (BrokenPipeError, OSError):
            raise VideoError(path, f"decoder process crashed (exit code {self.stop()})") from None
        finally:
            if not finished:  # timed out, crashed, or abandoned while the worker is still sending
                self.stop()


__all__ = ["WindowStacks", "decode_windows", "plan_windows", "windows_per_group", "WindowDecodeProcess", "MAX_GROUP_FRAMES"]
