"""Long synthetic videos made of shots (a coloured shape on a plain background per shot, hard cuts between
them), for the tests and the benchmark of segment search (`dgl embed --window`, `--scenes`), and a moment-
retrieval dataset (`make_synthetic_long`, `dgl make-data synthetic-long`).

Each shot is rendered by `synthetic.render_clip` and encoded as soon as it is drawn, so a clip of any length
takes the memory of one shot. h264/yuv420p mp4, one encoder thread, deterministic in its arguments.

`make_synthetic_long`: each video is M motion events (`synthetic.random_meta`: a coloured shape moving
left/right/up/down, captioned "a red circle moves from left to right") with distractor segments before, between
and after them (a still frame of the background with grey noise, nothing moving), lengths drawn from the seed; the events of
one video have different captions. The annotations are Charades-STA's format (`charades_sta_test.txt`:
`VIDEOID START END##caption`, times of the event's first frame and the end of its last), so
`dgl eval --dataset charades --annotations OUT --videos OUT --moments --window W` reads them. Same seed, same
bytes (the encoder settings of `synthetic`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from dgl_deploy.data.synthetic import BACKGROUND, COLORS, SHAPES, motion_captions, random_meta, render_clip
from dgl_deploy.errors import DGLError
from dgl_deploy.files import atomic_path, atomic_write_text

LONG_ANNOTATIONS = "charades_sta_test.txt"  # the charades adapter's default (test) split file
NOISE = 24  # distractor segments: one still frame, the background + uniform noise in [0, NOISE)


@dataclass(frozen=True)
class Shot:
    """One shot: `shape` in `color` crossing the frame from left to right in `seconds`, on `background` (a colour
    name; None: synthetic's dark grey)."""

    color: str
    shape: str
    seconds: float
    background: str | None = None


def write_shots(path: Path | str, shots: list[Shot], size: tuple[int, int] = (64, 64), fps: int = 10,
                gop: int = 250) -> Path:
    """Encode `shots` one after another into the mp4 `path` (size (H, W), both even; a key frame at least
    every `gop` frames). Returns `path`."""
    return write_pieces(path, (_shot_frames(shot, size, fps) for shot in shots), size, fps, gop)


def write_pieces(path: Path | str, pieces: Iterable[np.ndarray], size: tuple[int, int], fps: int,
                 gop: int = 250) -> Path:
    """Encode (T, H, W, 3) uint8 pieces one after another into the mp4 `path`, each as soon as it comes.
    Returns `path`."""
    path = Path(path)
    height, width = size
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4",
                                           options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.height, stream.width, stream.pix_fmt, stream.thread_count = height, width, "yuv420p", 1
        stream.options = {"crf": "18", "preset": "veryfast", "tune": "zerolatency", "threads": "1", "g": str(gop)}
        for frames in pieces:
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def _shot_frames(shot: Shot, size: tuple[int, int], fps: int) -> np.ndarray:
    """The (T, H, W, 3) uint8 frames of one shot."""
    frames = render_clip(_shot_meta(shot, size, fps), *size)
    if shot.background:
        frames[(frames == BACKGROUND).all(axis=-1)] = COLORS[shot.background]
    return frames


def cycle_shots(seconds: float, shot_seconds: float) -> list[Shot]:
    """Shots of `shot_seconds` (the last one shorter) filling `seconds`, cycling through colours and shapes."""
    colors = list(COLORS)
    count = int(np.ceil(seconds / shot_seconds))
    return [Shot(colors[i % len(colors)], SHAPES[i % len(SHAPES)], min(shot_seconds, seconds - i * shot_seconds))
            for i in range(count)]


def _shot_meta(shot: Shot, size: tuple[int, int], fps: int) -> dict:
    """The `synthetic.render_clip` description of a shot: left to right across the middle of the frame."""
    height, width = size
    radius = max(3, min(height, width) // 8)
    return {"shape": shot.shape, "color": shot.color, "radius": radius, "num_frames": max(1, round(shot.seconds * fps)),
            "start": [radius + 1, height / 2], "end": [width - radius - 2, height / 2]}


def make_synthetic_long(out_dir: Path | str, videos: int, events: int, seed: int = 0, size: tuple[int, int] = (64, 64),
                        event_seconds: float = 4.0, fps: int = 10) -> Path:
    """Write `videos` long clips `long_00000.mp4`… of `events` motion events each (distractor segments of
    `event_seconds` to 2 * `event_seconds` around them) and their Charades-STA annotations into `out_dir`; see the
    module docstring. Returns the annotations path."""
    if size[0] % 2 or size[1] % 2:
        raise DGLError(f"synthetic video size {size} must be even (h264 with 4:2:0 chroma)")
    if events < 1 or events > len(COLORS) * len(SHAPES) * 4:
        raise DGLError(f"synthetic-long: events must be 1..{len(COLORS) * len(SHAPES) * 4} per video, got {events}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for number in range(videos):
        name = f"long_{number:05d}"
        pieces, moments = _long_video(rng, events, size, event_seconds, fps)
        write_pieces(out_dir / f"{name}.mp4", pieces, size, fps)
        lines += [f"{name} {start:.2f} {end:.2f}##{caption}\n" for caption, start, end in moments]
    annotations = out_dir / LONG_ANNOTATIONS
    atomic_write_text(annotations, "".join(lines))
    return annotations


def _long_video(rng: np.random.Generator, events: int, size: tuple[int, int], event_seconds: float,
                fps: int) -> tuple[list[np.ndarray], list[tuple[str, float, float]]]:
    """The frame pieces (distractor, event, distractor, …, distractor) of one long video and its events'
    (caption, start, end) in seconds."""
    frames_per_event = max(1, round(event_seconds * fps))
    metas: list[dict[str, Any]] = []
    while len(metas) < events:  # distinct captions within a video: each names one moment
        meta = random_meta(rng, size, frames_per_event, fps)
        if all(motion_captions(meta)[0] != motion_captions(m)[0] for m in metas):
            metas.append(meta)
    pieces, moments, at = [], [], 0
    for meta in [*metas, None]:
        gap = int(rng.integers(frames_per_event, 2 * frames_per_event + 1))
        still = np.add(BACKGROUND, rng.integers(0, NOISE, (*size, 3))).astype(np.uint8)  # (H, W, 3)
        pieces.append(np.broadcast_to(still, (gap, *size, 3)))
        at += gap
        if meta is not None:
            pieces.append(render_clip(meta, *size))
            moments.append((motion_captions(meta)[0], at / fps, (at + frames_per_event) / fps))
            at += frames_per_event
    return pieces, moments


__all__ = ["Shot", "write_shots", "write_pieces", "cycle_shots", "make_synthetic_long", "LONG_ANNOTATIONS"]
