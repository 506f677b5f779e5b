"""Synthetic text-video data: real h264 mp4 clips of one coloured shape moving across a plain background.

Every clip is fully described by its metadata (shape, colour, direction, start/end centre in pixels,
frame count, fps), so tests can check decoded frames against it and demos can caption both
a whole clip (motion: "a red circle moves from left to right") and a single moment
(`frame_caption`: "a red circle on the left") — the second cannot tell the motion apart.
Everything is deterministic in the seed.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

from dgl_deploy.errors import DGLError
from dgl_deploy.files import atomic_path, atomic_write_text

SHAPES = ("circle", "square", "triangle")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 70, 230),
    "yellow": (230, 220, 30),
    "magenta": (210, 40, 210),
}
DIRECTIONS: dict[str, tuple[int, int]] = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}
BACKGROUND = (40, 40, 40)
ANNOTATIONS_NAME = "annotations.jsonl"

_MOTION_TEMPLATES = (
    "a {color} {shape} moves from {src} to {dst}",
    "a {color} {shape} moving {direction}",
    "the {shape} is {color} and travels {direction}",
)
_SIDE_NAMES = {"right": ("left", "right"), "left": ("right", "left"), "down": ("top", "bottom"), "up": ("bottom", "top")}


def _write_video(path: Path, frames: np.ndarray, fps: int, faststart: bool = False) -> None:
    """Encode (T, H, W, 3) uint8 RGB frames as h264/yuv420p mp4; H and W must be even.

    Byte-for-byte reproducible: libx264 runs on one thread and without its lookahead (tune zerolatency:
    no B-frames, no MB-tree); with the lookahead, some clips came out different between runs of the
    same seed, even on one thread. The muxer writes no version string or creation time (bitexact).
    """
    options = {"fflags": "+bitexact", **({"movflags": "faststart"} if faststart else {})}
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4", options=options) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.thread_count = 1
        stream.options = {"crf": "18", "preset": "veryfast", "tune": "zerolatency", "threads": "1"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def _shape_mask(shape: str, height: int, width: int, centers: np.ndarray, radius: float) -> np.ndarray:
    """Boolean (T, H, W) masks of `shape` centred at each (x, y) row of `centers` (T, 2)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)  # (H, W)
    dx = xs[None] - centers[:, 0, None, None]  # (T, H, W)
    dy = ys[None] - centers[:, 1, None, None]
    if shape == "circle":
        return dx**2 + dy**2 <= radius**2
    if shape == "square":
        return (np.abs(dx) <= radius) & (np.abs(dy) <= radius)
    # Upward triangle: apex at the top, base at the bottom of the bounding box.
    return (dy <= radius) & (np.abs(dx) <= (dy + radius) / 2)


def render_clip(meta: dict[str, Any], height: int, width: int) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 of the clip `meta` describes (centre moves linearly from start to end)."""
    n = meta["num_frames"]
    t = np.linspace(0.0, 1.0, n, dtype=np.float32)[:, None]  # (T, 1)
    centers = (1 - t) * np.asarray(meta["start"], np.float32) + t * np.asarray(meta["end"], np.float32)  # (T, 2)
    mask = _shape_mask(meta["shape"], height, width, centers, meta["radius"])  # (T, H, W)
    frames = np.empty((n, height, width, 3), np.uint8)
    frames[:] = BACKGROUND
    frames[mask] = COLORS[meta["color"]]
    return frames


def random_meta(rng: np.random.Generator, size: tuple[int, int], num_frames: int, fps: int) -> dict[str, Any]:
    """Draw shape, colour, direction, speed and a start/end centre that keeps the shape in frame."""
    height, width = size
    radius = max(3, min(height, width) // 8)
    direction = str(rng.choice(list(DIRECTIONS)))
    dx, dy = DIRECTIONS[direction]
    lo = np.array([radius + 1, radius + 1], np.float64)
    hi = np.array([width - radius - 2, height - radius - 2], np.float64)
    span = hi - lo
    travel = rng.uniform(0.6, 1.0)  # speed: fraction of the free span crossed during the clip
    step = np.array([dx, dy], np.float64)  # unit direction, (2,)
    along = step != 0
    begin = np.where(step > 0, lo, hi)  # side the shape starts from
    offset = (1 - travel) / 2  # centred path: the average frame is the same for both directions of an axis
    start = np.where(along, begin + step * offset * span, lo + rng.uniform(0, 1, 2) * span)
    end = np.where(along, start + step * travel * span, start)
    return {
        "shape": str(rng.choice(SHAPES)),
        "color": str(rng.choice(list(COLORS))),
        "direction": direction,
        "start": [round(float(v), 2) for v in start],
        "end": [round(float(v), 2) for v in end],
        "radius": radius,
        "num_frames": num_frames,
        "fps": fps,
        "size": [height, width],
    }


def motion_captions(meta: dict[str, Any]) -> list[str]:
    """Video-level captions naming colour, shape and direction of motion."""
    src, dst = _SIDE_NAMES[meta["direction"]]
    fields = {"color": meta["color"], "shape": meta["shape"], "direction": meta["direction"], "src": src, "dst": dst}
    return [template.format(**fields) for template in _MOTION_TEMPLATES]


def _position_words(x: float, y: float, height: int, width: int) -> tuple[str, str]:
    horizontal = ("left", "centre", "right")[min(2, int(3 * x / width))]
    vertical = ("top", "middle", "bottom")[min(2, int(3 * y / height))]
    return horizontal, vertical


def frame_caption(meta: dict[str, Any], t_fraction: float) -> str:
    """Static caption at time `t_fraction` in [0, 1]: colour, shape and position in a 3x3 grid.

    Example: "a red circle at the top left", "a blue square in the centre" (middle row, centre column).
    """
    t = float(np.clip(t_fraction, 0.0, 1.0))
    x, y = ((1 - t) * np.asarray(meta["start"]) + t * np.asarray(meta["end"])).tolist()
    height, width = meta["size"]
    horizontal, vertical = _position_words(x, y, height, width)
    thing = f"a {meta['color']} {meta['shape']}"
    if (horizontal, vertical) == ("centre", "middle"):
        return f"{thing} in the centre"
    if vertical == "middle":
        return f"{thing} on the {horizontal}"
    if horizontal == "centre":
        return f"{thing} at the {vertical}"
    return f"{thing} at the {vertical} {horizontal}"


def make_synthetic(
    out_dir: Path,
    videos: int,
    seed: int = 0,
    size: tuple[int, int] = (64, 64),
    seconds: float = 2.0,
    fps: int = 10,
    broken: bool = False,
) -> Path:
    """Write `videos` clips `vid_00000.mp4`… plus `annotations.jsonl` (generic format) into `out_dir`.

    size is (height, width), both even. Each JSONL row: {"video", "caption": [3 motion captions], "meta"}.
    With `broken`, also writes the files of `write_broken_files` into `out_dir/broken/` (not annotated).
    Returns the annotations path.
    """
    if size[0] % 2 or size[1] % 2:
        raise DGLError(f"synthetic video size {size} must be even (h264 with 4:2:0 chroma)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    num_frames = max(1, round(seconds * fps))
    rows = []
    for i in range(videos):
        meta = random_meta(rng, size, num_frames, fps)
        name = f"vid_{i:05d}.mp4"
        _write_video(out_dir / name, render_clip(meta, *size), fps)
        rows.append({"video": name, "caption": motion_captions(meta), "meta": meta})
    if broken:
        write_broken_files(out_dir / "broken")
    annotations = out_dir / ANNOTATIONS_NAME
    atomic_write_text(annotations, "".join(json.dumps(row) + "\n" for row in rows))
    return annotations


def write_broken_files(directory: Path) -> dict[str, str | None]:
    """Write files a decoder must reject (or survive); returns {file name: expected reason prefix, None = good}.

    - `truncated.mp4`: a faststart mp4 (index at the front) cut to 60 % of its bytes, like an
      interrupted download: the index promises frames the file no longer holds.
    - `truncated_noindex.mp4`: a plain mp4 cut in half: its `moov` index (written last) is gone.
    - `empty.mp4`: zero bytes.  - `text.mp4`: a text file with an .mp4 name.
    - `wrong_extension.avi`: a valid mp4 named .avi. This one is GOOD: decoders probe the content,
      not the name, so it decodes normally.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234)
    meta = random_meta(rng, (96, 96), 40, 10)
    frames = render_clip(meta, 96, 96)  # (T, H, W, 3)
    _write_video(directory / "wrong_extension.avi", frames, 10)
    grain = rng.integers(0, 50, frames.shape, dtype=np.uint8)  # noise: enough bytes per frame to cut mid-stream
    for name, faststart, keep in (("truncated.mp4", True, 0.6), ("truncated_noindex.mp4", False, 0.5)):
        path = directory / name
        _write_video(path, np.maximum(frames, grain), 10, faststart=faststart)
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])
    (directory / "empty.mp4").write_bytes(b"")
    (directory / "text.mp4").write_text("this is not a video\n" * 20)
    return {
        "truncated.mp4": "corrupt or truncated video",
        "truncated_noindex.mp4": "not a readable video",
        "empty.mp4": "empty file",
        "text.mp4": "not a readable video",
        "wrong_extension.avi": None,
    }
