"""Decode every window of one video in one pass (`dgl embed --window`): T frames per window, each frame decoded
and resized once however many windows share it.

`decode_windows` opens the file once, finds its windows (`data.windows`; shots by `data.scenes` first with
`--scenes`) and every window's frame indices (`video.frame_indices` with the window as segment), then decodes
the sorted union of those frames in one forward pass through the file, in batches of whole GOPs of at most
`DECODE_BYTES` of full-size frames, resizing each once. A window is complete once the pass reaches its last
frame; complete windows go out in groups of `max_frames // T`, assembled as (G, T, S, S, 3) stacks from the shared
frames, and frames that no later window needs are dropped. So no frame is fetched twice (overlapping windows
share theirs), and this process holds one group's frames and one batch of full-size frames at a time.

decord decodes ahead: while a `get_batch` waits for a frame it keeps pushing packets to its decoder thread, which
then converts every one of them to an RGB frame in an unbounded queue, during and after the call, until the end
of the file or the next seek (on a 1080p file: +1 GB of RSS per second after one `get_batch`). So the decoder
process grew with the file's length, most while its send waited on the encoder. Every batch now ends with a seek
(`_Reader.read`), which stops that. Batches start at key frames, so the seek decodes nothing twice, except in a
GOP with more wanted frames than one batch holds: its later pieces decode its start again.
Decoder process peak RSS in a whole `embed_videos` job (bench_segments.py --rss-minutes, 1080p 5 fps, key frame
every 10 s): 430 / 488 / 515 MB on 2 / 6 / 12-minute files (an earlier run: 368 / 443 / 445; the previous reopen
every 32 frames: 989 / 1898 MB on 2 / 6 minutes). In-process, the previous reopen took 12.3 s of CPU on the
10-minute 640x360 clip, a seek to frame 0 after each batch 6.4 s.

Why one forward pass (benchmarks/bench_segments.py, results in benchmarks/results/segments.json): on a
10-minute 640x360 h264 clip (10 s windows, stride 5 s, T = 12, key frame every 10 s) one pass took 3.9 s against
10.0 s for a seek and a decode per window (which decodes overlapping stretches twice and restarts at a key frame
for every window); decoding every frame in order took 4.0 s there, but its memory grows like decord's queue
(3.4 GB on the 6-minute 1080p file).

`WindowDecodeProcess` runs it in a crash-isolated subprocess that streams the groups back; the time limit
applies to each group (and to each piece of shot detection), so a long file gets as much time as it needs while
a hang or a crash is still caught.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import decord
import numpy as np

from dgl_deploy.data.video import VideoError, _check_file, decode_frames, frame_indices, resize_center_crop
from dgl_deploy.data.windows import Segmentation, windows_of
from dgl_deploy.data.worker import Connection, WorkerProcess, decoder_message, worker_loop

MAX_GROUP_FRAMES = 128  # frames (windows x T) sent at a time
DECODE_BYTES = 32 << 20  # full-size frames decoded per batch, in bytes (1080p: 5 frames; 64 MB: higher peaks)


@dataclass(frozen=True)
class WindowStacks:
    """Consecutive windows of one file: windows first .. first + G - 1 of its `total`."""

    spans: np.ndarray | None  # (G, 2) float64: start, end in seconds (None: the whole file, one group)
    frames: np.ndarray  # (G, T, S, S, 3) uint8
    first: int
    total: int

    @property
    def last(self) -> bool:
        """Whether these are the file's last windows."""
        return self.first + len(self.frames) == self.total


def _nothing() -> None:
    pass


def decode_windows(path: Path | str, segmentation: Segmentation, num_frames: int, image_size: int,
                   max_frames: int = MAX_GROUP_FRAMES, progress: Callable[[], None] = _nothing) -> Iterator[WindowStacks]:
    """Every window of `path`, in order, in groups of at most `max_frames // T` windows (see the module
    docstring); runs in this process, no time limit. `progress` is called during shot detection. Raises
    VideoError."""
    path = Path(path)
    reader = _open(path)
    count, fps = len(reader), reader.get_avg_fps()
    if not fps > 0:
        raise VideoError(path, f"unknown frame rate ({fps}): cannot place windows in time")
    cuts = _cuts(path, segmentation, progress) if segmentation.scenes else None
    spans = windows_of(count / fps, segmentation, cuts)
    indices = [frame_indices(count, fps, num_frames, span) for span in spans]  # each (T,) int64
    still_needed = np.minimum.accumulate([int(i.min()) for i in indices][::-1])[::-1]  # lowest frame of windows w..
    size = max(1, max_frames // num_frames)  # windows per group
    frames: dict[int, np.ndarray] = {}  # frame index -> (S, S, 3), decoded and still needed
    ready: list[int] = []  # complete windows not sent yet
    following = 0  # the first window not complete yet
    wanted = np.unique(np.concatenate(indices))  # ascending: one forward pass through the file
    for batch in _batches(wanted, reader.keys, reader.batch_frames):
        frames.update(zip(batch, _read_resized(reader, path, batch, image_size), strict=True))
        while following < len(spans) and indices[following].max() <= batch[-1]:
            ready.append(following)
            following += 1
            if len(ready) == size or following == len(spans):
                yield _group(ready, spans, indices, frames)
                lowest = int(still_needed[following]) if following < len(spans) else count
                frames = {i: frame for i, frame in frames.items() if i >= lowest}
                ready = []


def _batches(wanted: np.ndarray, keys: np.ndarray, limit: int) -> Iterator[list[int]]:
    """`wanted` (ascending) in batches of at most `limit` frames made of whole GOPs (the frames from one key
    frame to the next), so that the seek that starts each batch decodes no frame twice; a GOP with more than
    `limit` wanted frames is split (each later piece decodes the GOP's start again)."""
    batch: list[int] = []
    for gop in np.split(wanted, np.flatnonzero(np.diff(np.searchsorted(keys, wanted, "right"))) + 1):
        if batch and len(batch) + len(gop) > limit:
            yield batch
            batch = []
        pieces = [gop[start:start + limit].tolist() for start in range(0, len(gop), limit)]
        yield from pieces[:-1]
        batch += pieces[-1]
    if batch:
        yield batch


def _group(windows: list[int], spans: list, indices: list[np.ndarray], frames: dict[int, np.ndarray]) -> WindowStacks:
    """The stacks of `windows` (consecutive) assembled from the decoded frames."""
    stacks = np.stack([np.stack([frames[int(i)] for i in indices[w]]) for w in windows])  # (G, T, S, S, 3)
    return WindowStacks(np.array([spans[w] for w in windows], np.float64), stacks, windows[0], len(spans))


class _Reader:
    """decord's VideoReader, stopped from decoding ahead after each batch (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        self.keys = np.array(self.reader.get_key_indices(), np.int64)  # key frame indices, ascending
        self.batch_frames = max(1, DECODE_BYTES // int(np.prod(self.reader[0].shape)))
        self.reader.seek(0)

    def __len__(self) -> int:
        return len(self.reader)

    def get_avg_fps(self) -> float:
        return self.reader.get_avg_fps()

    def read(self, indices: list[int]) -> np.ndarray:
        """Frames `indices` (ascending), full size: (F, H, W, 3) uint8. Then a seek drops the packets and frames
        decord queued ahead: to the next key frame, where the next batch starts (batches are whole GOPs), so that
        read needs no seek of its own (10-min 640x360 clip: 4.0 s against 5.3 s with a seek to frame 0, the
        same frames)."""
        frames = self.reader.get_batch(indices).asnumpy()
        following = int(np.searchsorted(self.keys, indices[-1], "right"))
        self.reader.seek(int(self.keys[following]) if following < len(self.keys) else 0)
        return frames


def _open(path: Path) -> _Reader:
    _check_file(path)
    try:
        reader = _Reader(path)
    except (decord.DECORDError, RuntimeError):
        decode_frames(path, 1, 8)  # raises the VideoError naming the cause, as for a whole-file row
        raise VideoError(path, "not a readable video") from None
    if len(reader) == 0:
        raise VideoError(path, "no video frames")
    return reader


def _cuts(path: Path, segmentation: Segmentation, progress: Callable[[], None]) -> list[float]:
    from dgl_deploy.data.scenes import detect_cuts

    try:
        return detect_cuts(path, segmentation.scene_threshold, progress)
    except Exception as exc:  # OpenCV / PySceneDetect errors on a file decord could open
        raise VideoError(path, f"shot detection failed ({type(exc).__name__}: {decoder_message(exc)})") from None


def _read_resized(reader: _Reader, path: Path, indices: list[int], image_size: int) -> np.ndarray:
    """Frames `indices` (ascending, one batch) decoded and resized: (F, S, S, 3) uint8."""
    try:
        frames = reader.read(indices)  # (F, H, W, 3)
    except (decord.DECORDError, RuntimeError, IndexError) as exc:
        raise VideoError(path, f"corrupt or truncated video ({decoder_message(exc)})") from None
    if len(frames) != len(indices):
        raise VideoError(path, f"truncated video (got {len(frames)} of {len(indices)} frames)")
    return resize_center_crop(frames, image_size)


def _serve(conn: Connection) -> None:
    """Worker: (path, segmentation, T, S, max_frames) -> ('group', WindowStacks) per group (('progress', None)
    during shot detection), then ('done', None); or ('error', reason)."""

    def handle(request: tuple) -> None:
        for stacks in decode_windows(*request, progress=lambda: conn.send(("progress", None))):
            conn.send(("group", stacks))
        conn.send(("done", None))

    worker_loop(conn, handle)


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
        _check_file(path)
        conn = self.connection()
        finished = False
        try:
            conn.send((str(path), segmentation, num_frames, image_size, max_frames))
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
                    yield payload
        except (BrokenPipeError, OSError):
            raise VideoError(path, f"decoder process crashed (exit code {self.stop()})") from None
        finally:
            if not finished:  # timed out, crashed, or abandoned while the worker is still sending
                self.stop()


__all__ = ["WindowStacks", "decode_windows", "WindowDecodeProcess", "MAX_GROUP_FRAMES", "DECODE_BYTES"]
