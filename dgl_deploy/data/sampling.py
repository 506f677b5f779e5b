"""Which frames of a clip the model sees: the two frame-sampling rules, as index arithmetic (no decoder here,
so annotation, config and CLI code can name the modes without importing the decoder).

`uniform` (dgl-deploy's own, the default): uniform in *time*, on the frames' presentation times t_0 … t_{N-1}
(`decoder.Timeline`, seconds from the first frame). Whole clip: first, last = 0, N - 1. With a segment
[start_s, end_s]: first = the frame shown at start_s (the last with t <= start_s), last = the last frame that
starts before end_s (at least first), so a segment past the end of the clip clamps to its last frame. Then
    s_i = t_first + i * (t_last - t_first) / (T - 1),  i = 0 … T-1
    idx_i = rint(the fractional frame index of s_i)      (np.interp over the times, round half to even)
On a constant-rate clip (t_j = j / fps) this is rint(np.linspace(first, last, T)) with first = floor(start_s *
fps) and last = ceil(end_s * fps) - 1; on a variable-rate clip it follows the clock, not the frame count.
T = 1 takes `first`. Clips with fewer than T frames repeat frames (some indices come twice).

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
container without one (WebM, Matroska) gives N = 0 and a clip of one repeated frame; we use the number
of frames the stream's packets hold (`decoder.Timeline`; the same number for MP4/AVI). (2) Reference training jitters each index within
its part (TSN random shift); `reference` here always takes the centres, in training too (deterministic,
cacheable). (3) The reference never resizes: its videos are prepared by CLIP4Clip's compress_video.py
(ffmpeg, 3 fps, shorter side 224) and only centre-cropped; on such files our resize is the identity and
the crops agree (tests/test_sampling_reference.py checks frames and pixels against a port of that code).
"""

from __future__ import annotations

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


TIME_EPS = 1e-6  # seconds: times closer than this are the same (spans are recorded to the microsecond)


def uniform_indices(times: np.ndarray, num_frames: int, segment: Segment | None = None) -> np.ndarray:
    """The `uniform` rule on frame times (seconds, ascending; module docstring): int64 (T,)."""
    first, last = 0, len(times) - 1
    if segment is not None:
        start_s, end_s = segment
        if not 0 <= start_s < end_s:
            raise ValueError(f"invalid segment {segment}")
        first = min(max(int(np.searchsorted(times, start_s + TIME_EPS, "right")) - 1, 0), last)
        last = min(max(int(np.searchsorted(times, end_s - TIME_EPS, "left")) - 1, first), last)
    picks = np.linspace(times[first], times[last], num_frames)
    return np.rint(np.interp(picks, times[first:last + 1], np.arange(first, last + 1))).astype(np.int64)


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


def sample_indices(times: np.ndarray, fps: float, num_frames: int, segment: Segment | None = None,
                   sampling: Sampling = DEFAULT_SAMPLING) -> np.ndarray:
    """The `num_frames` frame indices to decode under `sampling`, int64 (T,), for frames shown at `times`
    (seconds, ascending) of a container whose average rate is `fps`. A bad segment raises ValueError."""
    if check_sampling(sampling) == "uniform":
        return uniform_indices(times, num_frames, segment)
    return reference_indices(len(times), fps, num_frames, segment)


def frame_indices(
    num_available: int, fps: float, num_frames: int, segment: Segment | None = None, sampling: Sampling = DEFAULT_SAMPLING
) -> np.ndarray:
    """`sample_indices` for a constant-rate clip of `num_available` frames at `fps`."""
    if not fps > 0:
        raise ValueError(f"invalid frame rate {fps}")
    return sample_indices(np.arange(num_available) / fps, fps, num_frames, segment, sampling)

