"""Which frames of a clip the model sees: the two frame-sampling rules, as index arithmetic (no decoder here,
so annotation, config and CLI code can name the modes without importing decord).

`uniform` (dgl-deploy's own, the default): whole clip of N decodable frames, T wanted:
    first, last = 0, N - 1
    idx_i = rint(first + i * (last - first) / (T - 1)),  i = 0 … T-1      (np.linspace, round half to even)
With a segment [start_s, end_s] (seconds, at the container's average fps):
    first = clip(floor(start_s * fps), 0, N - 1),  last = clip(ceil(end_s * fps) - 1, first, N - 1)
so a segment past the end of the clip clamps to its last frame. T = 1 takes `first`. Clips with fewer
than T frames repeat frames (the linspace hits some indices twice).

`reference`: the frames the DGL reference code evaluates on (github knightyxp/DGL `dataloaders/decode.py`
RawVideoExtractorpyAV with `sampling.py` uniform_sampling, inherited from CenterCLIP; not CLIP4Clip's
OpenCV extractor, whose import is commented out there). The centres of T equal parts of n frames:
    tick = n / T,  idx_i = first + int(tick / 2 + tick * i)       if n > T
    idx_i = first + min(i, n - 1)                                  if n <= T: the last frame repeats
Whole clip: first = 0, n = N. A segment (the reference's ActivityNet and DiDeMo loaders pass
[0, ceil(duration)] and [0, 31] s) is cut to whole seconds as they do (int(start), int(end), end + 1 when
they are equal), then the reference keeps frames int(start * fps) … int(end * fps), both ends included:
    first = int(start * fps),  n = min(int(end * fps), N - 1) - first + 1
Short clips: the reference pads by repeating the last frame (the formula above). Its loaders also build a
video mask of min(n, T) frames, but the DGL model never reads it (encode_image takes no mask and the
masked mean pooling is commented out), so repeated frames are exactly what the reference model sees.

Reference details not reproduced, on purpose: (1) N is the container's frame count there, and a
container without one (WebM, Matroska) gives N = 0 and a clip of one repeated frame; we use the
decodable frame count (the same number for MP4/AVI). (2) Reference training jitters each index within
its part (TSN random shift); `reference` here always takes the centres, in training too (deterministic,
cacheable). (3) The reference never resizes: its videos are prepared by CLIP4Clip's compress_video.py
(ffmpeg, 3 fps, shorter side 224) and only centre-cropped; on such files our resize is the identity and
the crops agree (tests/test_sampling_reference.py checks frames and pixels against a port of that code).
"""

from __future__ import annotations

import math
from typing import Literal, cast

import numpy as np

from dgl_deploy.data.segments import Segment
from dgl_deploy.errors import DGLError

Sampling = Literal["uniform", "reference"]
SAMPLINGS: tuple[Sampling, ...] = ("uniform", "reference")
DEFAULT_SAMPLING: Sampling = "uniform"


def check_sampling(value: object, where: str = "frame sampling") -> Sampling:
    """`value` as a Sampling, else one-line DGLError naming `where`."""
    if value not in SAMPLINGS:
        raise DGLError(f"{where}: unknown frame sampling {value!r} (choose from {', '.join(SAMPLINGS)})")
    return cast(Sampling, value)


def uniform_indices(num_available: int, fps: float, num_frames: int, segment: Segment | None = None) -> np.ndarray:
    """The `uniform` rule (module docstring): int64 (T,)."""
    first, last = 0, num_available - 1
    if segment is not None:
        start_s, end_s = segment
        if not (fps > 0 and 0 <= start_s < end_s):
            raise ValueError(f"invalid segment {segment} (fps {fps})")
        first = min(max(math.floor(start_s * fps), 0), last)
        last = min(max(math.ceil(end_s * fps) - 1, first), last)
    return np.rint(np.linspace(first, last, num_frames)).astype(np.int64)


def reference_indices(num_available: int, fps: float, num_frames: int, segment: Segment | None = None) -> np.ndarray:
    """The `reference` rule (module docstring): int64 (T,)."""
    first, count = 0, num_available
    if segment is not None:
        start, end = int(segment[0]), int(segment[1])
        end += start == end
        if not (fps > 0 and 0 <= start < end):
            raise ValueError(f"invalid segment {segment} (fps {fps})")
        first = int(start * fps)
        count = min(int(end * fps), num_available - 1) - first + 1
        if count < 1:
            raise ValueError(f"segment {segment} starts after the last frame ({num_available} frames at {fps:g} fps)")
    if count > num_frames:
        tick = count / num_frames
        return first + (tick / 2.0 + tick * np.arange(num_frames)).astype(np.int64)
    return first + np.minimum(np.arange(num_frames, dtype=np.int64), count - 1)


def frame_indices(
    num_available: int, fps: float, num_frames: int, segment: Segment | None = None, sampling: Sampling = DEFAULT_SAMPLING
) -> np.ndarray:
    """The `num_frames` frame indices to decode under `sampling`, int64 (T,). A bad segment raises ValueError."""
    rule = uniform_indices if check_sampling(sampling) == "uniform" else reference_indices
    return rule(num_available, fps, num_frames, segment)

