"""Long synthetic videos made of shots (a coloured shape on a plain background per shot, hard cuts between
them), for the tests and the benchmark of segment search (`dgl embed --window`, `--scenes`).

Each shot is rendered by `synthetic.render_clip` and encoded as soon as it is drawn, so a clip of any length
takes the memory of one shot. h264/yuv420p mp4, one encoder thread, deterministic in its arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from dgl_deploy.data.synthetic import BACKGROUND, COLORS, SHAPES, render_clip
from dgl_deploy.files import atomic_path


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
    path = Path(path)
    height, width = size
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4",
                                           options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.height, stream.width, stream.pix_fmt, stream.thread_count = height, width, "yuv420p", 1
        stream.options = {"crf": "18", "preset": "veryfast", "tune": "zerolatency", "threads": "1", "g": str(gop)}
        for shot in shots:
            frames = render_clip(_shot_meta(shot, size, fps), height, width)  # (T, H, W, 3) uint8
            if shot.background:
                frames[(frames == BACKGROUND).all(axis=-1)] = COLORS[shot.background]
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


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


__all__ = ["Shot", "write_shots", "cycle_shots"]
