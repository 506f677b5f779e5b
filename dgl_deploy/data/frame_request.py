"""Which frames of which file to decode: the one description that the decoder (`video.decode_frames`), its
subprocess (`video.DecodeProcess`, `video.read_frames`), the parallel loader (`loader.iter_video_batches`) and the
frame cache (`frame_cache.FrameCache`, whose key it is) all take. The time allowed to decode is not part of it: it
says how long to wait, not what comes out. Torch- and PyAV-free, so the cache and annotation code can use it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dgl_deploy.data.sampling import DEFAULT_SAMPLING, Sampling, check_sampling
from dgl_deploy.data.segments import Segment


@dataclass(frozen=True)
class FrameRequest:
    """T frames of `path`, picked by `sampling` over `segment` (or the whole file), each resized so its shorter
    side is `image_size` and centre-cropped to (S, S)."""

    path: Path  # the video file (a str is taken and converted)
    num_frames: int  # T: frames picked
    image_size: int  # S: side of each square frame, in pixels
    segment: Segment | None = None  # (start, end) seconds to sample from; None: the whole file
    sampling: Sampling = DEFAULT_SAMPLING  # how the T frames are picked (`data.sampling`)

    def __post_init__(self) -> None:
        """Take a str path; refuse an unknown `sampling` (one-line DGLError) before any file is opened."""
        object.__setattr__(self, "path", Path(self.path))
        check_sampling(self.sampling)


__all__ = ["FrameRequest"]
