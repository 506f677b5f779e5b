"""Where the rows of a segmented embedding set lie in each video (`dgl embed --window W --stride S [--scenes]`).

Fixed windows, for a video of D seconds (W, S in seconds, 0 < S <= W):
    starts 0, S, 2S, ... while start + W < D, then one last window [D - W, D] aligned to the end of the file;
    a last window that would start within S * MERGE_FRACTION of the one before is merged into it (that window
    then ends at D: no near-duplicate rows); a video no longer than W is one window [0, D].
Shots (`--scenes`): the cut times found by PySceneDetect's ContentDetector (`data.scenes`) split [0, D] into
shots; a shot shorter than W * MIN_SHOT_FRACTION is merged into the shot before it (the first one into the
shot after it), then every shot longer than W is cut into fixed windows of its own (the rule above, inside
the shot). Each window's T frames are sampled as `video.frame_indices` samples a segment.

Times are rounded to microseconds, so the spans recorded in an embedding set do not depend on float noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dgl_deploy.data.segments import Segment
from dgl_deploy.errors import DGLError

MIN_SHOT_FRACTION = 0.25  # shots shorter than this fraction of the window are merged into a neighbour
MERGE_FRACTION = 0.25  # a last window starting within this fraction of the stride of the one before joins it
MAX_WINDOWS = 2_000_000  # windows of one file (23 days at a 1 s stride): a longer claim is refused in one line
DEFAULT_SCENE_THRESHOLD = 27.0  # ContentDetector's own default
_EPS = 1e-6  # seconds: below this, two times are the same


@dataclass(frozen=True)
class Segmentation:
    """How videos are cut into rows; recorded in the embedding manifest (`record`) and fixed for a set."""

    window: float  # seconds per row
    stride: float  # seconds between the starts of consecutive windows (<= window)
    scenes: bool = False  # cut at detected shot boundaries first
    scene_threshold: float = DEFAULT_SCENE_THRESHOLD  # ContentDetector threshold (with `scenes`)

    def __post_init__(self) -> None:
        """Refuse windows and strides that cannot cut a video (library callers get the CLI's checks too)."""
        for name in ("window", "stride", "scene_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise DGLError(f"segments: {name} must be a number > 0, got {value!r}")
        if self.stride > self.window:
            raise DGLError(f"segments: stride {self.stride:g} s is longer than the window {self.window:g} s "
                           "(the gaps between windows could not be found): use a stride <= the window")
        if not isinstance(self.scenes, bool):
            raise DGLError(f"segments: scenes must be True or False, got {self.scenes!r}")

    @property
    def min_shot(self) -> float:
        """Shots shorter than this (seconds) are merged into a neighbour."""
        return self.window * MIN_SHOT_FRACTION

    def record(self) -> dict[str, Any]:
        """What the manifest records (and what an update must match)."""
        scenes = {"detector": "content", "threshold": float(self.scene_threshold), "min_shot": self.min_shot}
        return {"window": float(self.window), "stride": float(self.stride), "scenes": scenes if self.scenes else None}

    def describe(self) -> str:
        """The options that give this segmentation, e.g. "--window 10 --stride 5"."""
        scenes = f"--scenes --scene-threshold {self.scene_threshold:g} " if self.scenes else ""
        return f"{scenes}--window {self.window:g} --stride {self.stride:g}"


def describe_record(record: dict[str, Any] | None) -> str:
    """A recorded segmentation (`Segmentation.record`, None for whole files) in words, for messages."""
    if record is None:
        return "one row per video (no --window)"
    scenes = record.get("scenes")
    options = f"--scenes --scene-threshold {scenes['threshold']:g} " if isinstance(scenes, dict) else ""
    return f"windows ({options}--window {record['window']:g} --stride {record['stride']:g})"


def fixed_windows(duration: float, window: float, stride: float, offset: float = 0.0) -> np.ndarray:
    """The windows of [offset, offset + duration], rule in the module docstring: (W, 2) float64 start, end."""
    if duration <= window + _EPS:
        return _spans(np.array([offset]), np.array([offset + duration]))
    count = math.ceil((duration - window) / stride - _EPS)  # starts k * stride with start + window < duration
    if count >= MAX_WINDOWS:
        raise DGLError(f"{duration:g} s at --window {window:g} --stride {stride:g} is over {MAX_WINDOWS:,} windows: "
                       "use a longer --stride")
    starts = np.arange(count) * stride
    last = duration - window
    if last - starts[-1] < stride * MERGE_FRACTION:  # the last window joins the one before
        ends = np.append(starts[:-1] + window, duration)
    else:
        starts, ends = np.append(starts, last), np.append(starts + window, duration)
    return _spans(offset + starts, offset + ends)


def shot_windows(duration: float, cuts: list[float], window: float, stride: float) -> np.ndarray:
    """The windows of a video of `duration` seconds with shot boundaries at `cuts` (seconds): (W, 2)."""
    edges = [0.0, *sorted(c for c in cuts if _EPS < c < duration - _EPS), duration]
    shots = merge_short_shots(list(zip(edges, edges[1:], strict=False)), window * MIN_SHOT_FRACTION)
    return np.concatenate([fixed_windows(end - start, window, stride, offset=start) for start, end in shots])


def merge_short_shots(shots: list[Segment], min_length: float) -> list[Segment]:
    """Consecutive (start, end) shots with each one shorter than `min_length` merged into the one before it
    (a short first shot absorbs the next one); a single shot is kept whatever its length."""
    merged: list[Segment] = []
    for start, end in shots:
        if merged and (end - start < min_length or merged[-1][1] - merged[-1][0] < min_length):
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def windows_of(duration: float, segmentation: Segmentation, cuts: list[float] | None = None) -> np.ndarray:
    """The windows of one video, (W, 2) float64 start, end: shots (`cuts` given, with `segmentation.scenes`) or
    fixed windows."""
    if segmentation.scenes:
        return shot_windows(duration, cuts or [], segmentation.window, segmentation.stride)
    return fixed_windows(duration, segmentation.window, segmentation.stride)


def _spans(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    return np.round(np.stack([starts, ends], axis=1).astype(np.float64), 6)  # (W, 2)


__all__ = ["Segmentation", "describe_record", "fixed_windows", "shot_windows", "merge_short_shots", "windows_of",
           "MIN_SHOT_FRACTION", "MERGE_FRACTION", "MAX_WINDOWS", "DEFAULT_SCENE_THRESHOLD"]
