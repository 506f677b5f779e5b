"""Video frames for CLIP, without torch: the T frames that frame sampling picks (`data.sampling`: `uniform` in
time, or `reference`), read by the PyAV decoder (`data.decoder`: upright, converted and resized once, shorter
side to `image_size` with swscale's bicubic, centre crop), uint8 out. This is the one preprocessing path of every
backend and of training (CLIP normalisation happens after it, inside the exported graphs or
`model.pixels.normalize`).

What to decode is a `frame_request.FrameRequest`. Robustness: `decode_frames` runs the decoder in the calling
process. `read_frames` and `DecodeProcess` run it in a separate process under a per-file time limit, so a hang or
a segfault on a bad file becomes a `VideoError` for that file, never a dead or stuck caller.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dgl_deploy.data.decoder import VideoError, VideoFile, check_file
from dgl_deploy.data.frame_request import FrameRequest
from dgl_deploy.data.preview import write_preview
from dgl_deploy.data.sampling import sample_indices
from dgl_deploy.data.segments import Segment
from dgl_deploy.data.shared_frames import FrameWriter, frame_bytes
from dgl_deploy.data.worker import Connection, WorkerProcess, worker_loop

DEFAULT_TIMEOUT_S = 60.0


def gather_frames(video: VideoFile, indices: np.ndarray, image_size: int) -> np.ndarray:
    """Frames `indices` (any order, repeats allowed) of an open file, each decoded once: (T, S, S, 3) uint8."""
    unique = np.unique(indices)
    frames = dict(video.frames(unique, image_size))
    return np.stack([frames[int(i)] for i in indices])


def representative(frames: np.ndarray) -> int:
    """The index of the least uniform of (T, S, S, 3) frames (largest spread of luminance): a poster that is never a
    black or white fade when the moment holds anything else. Ties: the earliest."""
    luma = frames.reshape(len(frames), -1, 3).astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return int(np.argmax(luma.std(axis=1)))  # (T,) spreads


def decode_frames(request: FrameRequest) -> np.ndarray:
    """Decode the frames `request` picks and preprocess them in this process (no time limit): (T, S, S, 3) uint8.
    Raises VideoError for the file."""
    with VideoFile(request.path) as video:
        timeline = video.timeline
        try:
            indices = sample_indices(timeline.times, timeline.fps, request.num_frames, request.segment, request.sampling)
        except ValueError as exc:
            raise VideoError(request.path, str(exc)) from None
        return gather_frames(video, indices, request.image_size)


_JOBS: dict[str, Callable[..., Any]] = {"frames": decode_frames, "preview": write_preview}


def _serve(conn: Connection, freed: Connection) -> None:
    """Worker: (job, args) -> ('ok', result) or ('error', reason); jobs: "frames" ((FrameRequest,) -> frames,
    put through the writer), "preview" (`preview.write_preview` args -> None)."""

    def handle(request: tuple, writer: FrameWriter) -> None:
        job, args = request
        result = _JOBS[job](*args)
        conn.send(("ok", writer.put(result) if isinstance(result, np.ndarray) else result))

    worker_loop(conn, freed, handle)


class DecodeProcess(WorkerProcess):
    """One decoding subprocess; `decode` enforces a time limit and restarts the process after a hang or crash.

    Not thread-safe: use one per thread. `close` kills the process (also unblocks a pending `decode`).
    """

    def __init__(self) -> None:
        super().__init__(_serve, __name__, "dgl-decode")

    def decode(self, request: FrameRequest, timeout: float = DEFAULT_TIMEOUT_S) -> np.ndarray:
        """Like `decode_frames`, in the subprocess, failing with VideoError after `timeout` seconds."""
        nbytes = frame_bytes(request.num_frames, request.image_size)
        return self.frames.take(self._run(request.path, "frames", (request,), timeout, nbytes))

    def preview(self, path: str | Path, segment: Segment | None, target: str | Path,
                timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """`preview.write_preview` in the subprocess, failing with VideoError after `timeout` seconds."""
        self._run(Path(path), "preview", (str(path), segment, str(target)), timeout)

    def _run(self, path: Path, job: str, args: tuple, timeout: float, nbytes: int = 0) -> Any:
        check_file(path)
        try:
            conn = self.send((job, args), nbytes)
            if not conn.poll(timeout):
                self.stop()
                raise VideoError(path, f"decoding timed out after {timeout:g} s")
            status, payload = conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            code = self.stop()
            raise VideoError(path, f"decoder process crashed (exit code {code})") from None
        if status == "error":
            raise VideoError(path, payload)
        return payload


_shared: DecodeProcess | None = None
_shared_lock = threading.Lock()


def read_frames(request: FrameRequest, timeout: float = DEFAULT_TIMEOUT_S) -> np.ndarray:
    """The frames `request` picks, resized + centre-cropped: (T, S, S, 3) uint8.

    Decodes in a shared background process (started on first use) under a `timeout` per file;
    raises VideoError naming the file and the reason for missing, empty, non-video, corrupt,
    truncated, hanging or crashing input. For many files use `loader.iter_video_batches`.
    """
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = DecodeProcess()
        return _shared.decode(request, timeout)
