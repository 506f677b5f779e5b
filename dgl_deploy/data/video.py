"""Video frames for CLIP, without torch: frame sampling (`data.sampling`: `uniform` or `reference`) with decord,
CLIP-style resize + centre crop, uint8 out. This is the one preprocessing path of every backend and of training
(CLIP normalisation happens after it, inside the exported graphs or `model.pixels.normalize`).

Pixels: resize the shorter side to `image_size` with Pillow's bicubic filter (antialiased; the filter of
open_clip's own preprocessing, which resizes PIL images), then centre-crop to a square with torchvision's
sizes: long side int(S * long / short), offsets round((side - S) / 2). A frame whose shorter side is already S
is only cropped (the bicubic weights are 1 at whole-pixel offsets): the reference's prepared videos.

Robustness: `decode_frames` runs decord in the calling process. `read_frames` and `DecodeProcess`
run it in a separate process under a per-file time limit, so a hang or a segfault on a bad file
becomes a `VideoError` for that file, never a dead or stuck caller.
"""

from __future__ import annotations

import threading
from pathlib import Path

import decord
import numpy as np
from PIL import Image

from dgl_deploy.data.sampling import DEFAULT_SAMPLING, Sampling, check_sampling, frame_indices
from dgl_deploy.data.segments import Segment
from dgl_deploy.data.worker import Connection, WorkerProcess, decoder_message, worker_loop
from dgl_deploy.errors import DGLError

DEFAULT_TIMEOUT_S = 60.0


class VideoError(DGLError):
    """A video file that cannot be decoded; `path` names it and `reason` says why (one line)."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def resize_center_crop(frames: np.ndarray, image_size: int) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, S, S, 3) uint8: shorter side to S (bicubic, antialias), centre crop.

    Pillow resamples only the source box that the crop keeps (the same filter centres and support as a full
    resize followed by the crop, a third less work on 16:9 frames)."""
    _, height, width, _ = frames.shape
    short, long = sorted((height, width))
    long = int(image_size * long / short)
    new_h, new_w = (image_size, long) if height <= width else (long, image_size)
    top, left = int(round((new_h - image_size) / 2.0)), int(round((new_w - image_size) / 2.0))
    sy, sx = height / new_h, width / new_w  # source pixels per resized pixel
    box = (left * sx, top * sy, (left + image_size) * sx, (top + image_size) * sy)
    out = np.empty((len(frames), image_size, image_size, 3), np.uint8)  # (T, S, S, 3)
    for i, frame in enumerate(frames):
        out[i] = Image.fromarray(frame).resize((image_size, image_size), Image.Resampling.BICUBIC, box=box)
    return out


def _check_file(path: Path) -> None:
    """Cheap checks before any decoder sees the file."""
    if not path.exists():
        raise VideoError(path, "file not found")
    if not path.is_file():
        raise VideoError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise VideoError(path, "empty file (0 bytes)")


def _open_failure(message: str) -> str:
    """The reason for a file decord cannot open: no video stream (decord's "Check failed: st_nb >= 0 ...
    cannot find video stream") or a damaged file."""
    if "cannot find video stream" in message:
        return "no video stream (audio-only or not a video)"
    return f"corrupt or truncated video ({message})"


def decode_frames(
    path: str | Path, num_frames: int, image_size: int, segment: Segment | None = None, sampling: Sampling = DEFAULT_SAMPLING
) -> np.ndarray:
    """Decode the frames `sampling` picks and preprocess them in this process (no time limit): (T, S, S, 3) uint8.
    Raises VideoError for the file, DGLError for an unknown `sampling`."""
    path = Path(path)
    check_sampling(sampling)
    _check_file(path)
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except decord.DECORDError as exc:
        raise VideoError(path, _open_failure(decoder_message(exc))) from None
    except RuntimeError:  # decord's "Error reading <file>...": no demuxer/stream/index found
        raise VideoError(path, "not a readable video (unknown format, no video stream, or missing index)") from None
    count = len(reader)
    if count == 0:
        raise VideoError(path, "no video frames")
    try:
        indices = frame_indices(count, reader.get_avg_fps(), num_frames, segment, sampling)
    except ValueError as exc:
        raise VideoError(path, str(exc)) from None
    try:
        frames = reader.get_batch(indices).asnumpy()  # (T, H, W, 3)
    except (decord.DECORDError, RuntimeError, IndexError) as exc:
        raise VideoError(path, f"corrupt or truncated video ({decoder_message(exc)})") from None
    if frames.shape[0] != num_frames:
        raise VideoError(path, f"truncated video (got {frames.shape[0]} of {num_frames} frames)")
    return resize_center_crop(frames, image_size)


def _serve(conn: Connection) -> None:
    """Worker: (path, num_frames, image_size, segment, sampling) -> ('ok', frames) or ('error', reason)."""
    worker_loop(conn, lambda request: conn.send(("ok", decode_frames(*request))))


class DecodeProcess(WorkerProcess):
    """One decoding subprocess; `decode` enforces a time limit and restarts the process after a hang or crash.

    Not thread-safe: use one per thread. `close` kills the process (also unblocks a pending `decode`).
    """

    def __init__(self) -> None:
        super().__init__(_serve, __name__, "dgl-decode")

    def decode(
        self,
        path: str | Path,
        num_frames: int,
        image_size: int,
        segment: Segment | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        sampling: Sampling = DEFAULT_SAMPLING,
    ) -> np.ndarray:
        """Like `decode_frames`, in the subprocess, failing with VideoError after `timeout` seconds."""
        path = Path(path)
        check_sampling(sampling)
        _check_file(path)
        conn = self.connection()
        try:
            conn.send((str(path), num_frames, image_size, segment, sampling))
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


def read_frames(
    path: str | Path,
    num_frames: int,
    image_size: int,
    segment: Segment | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    sampling: Sampling = DEFAULT_SAMPLING,
) -> np.ndarray:
    """T frames of `path` picked by `sampling`, resized + centre-cropped: (T, S, S, 3) uint8.

    Decodes in a shared background process (started on first use, ~3 s) under a `timeout` per file;
    raises VideoError naming the file and the reason for missing, empty, non-video, corrupt,
    truncated, hanging or crashing input. For many files use `loader.iter_video_batches`.
    """
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = DecodeProcess()
        return _shared.decode(path, num_frames, image_size, segment, timeout, sampling)
