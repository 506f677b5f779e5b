"""Short H.264 previews of moments, for files a browser cannot play (AVI, WMV, HEVC, ...): the search page of
`dgl serve` falls back to one when the original does not play.

`write_preview` decodes the moment's frames with the project's decoder (`decoder.VideoFile`: upright, each frame
once) and encodes them with libx264 into an MP4 whose time 0 is the moment's start: at most PREVIEW_SECONDS of
the moment, shorter side at most PREVIEW_SIDE pixels, at most PREVIEW_FPS frames a second, no audio, written
atomically. Bounded in size and time whatever the source: a 4K or 1000 fps file gives the same small preview.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np

from dgl_deploy.data.sampling import TIME_EPS
from dgl_deploy.data.segments import Segment
from dgl_deploy.files import atomic_path

PREVIEW_SECONDS = 60.0  # longest preview (seconds from the moment's start)
PREVIEW_SIDE = 360  # shorter side of the preview, pixels (smaller sources are not enlarged)
PREVIEW_FPS = 30  # most frames a second kept
PREVIEW_CRF = 28  # libx264 quality (higher: smaller)


def preview_frames(times: np.ndarray, segment: Segment) -> np.ndarray:
    """The frame indices a preview of `segment` shows (ascending): those shown within it, the first one on
    screen at its start, thinned to PREVIEW_FPS."""
    start, end = segment[0], min(segment[1], segment[0] + PREVIEW_SECONDS)
    first = max(int(np.searchsorted(times, start + TIME_EPS, "right")) - 1, 0)
    last = max(int(np.searchsorted(times, end - TIME_EPS, "left")) - 1, first)
    slots = np.floor((times[first:last + 1] - times[first]) * PREVIEW_FPS)  # (F,) the frame slot of each frame
    keep = np.flatnonzero(np.diff(slots, prepend=-1) > 0)  # the first frame of each slot
    return first + keep


def write_preview(path: str | Path, segment: Segment | None, target: str | Path) -> None:
    """Write the preview of `segment` of `path` (None: the whole file, up to PREVIEW_SECONDS) to `target` (.mp4).
    Raises VideoError for the source."""
    import av  # with the decoder, not with this module (the server reads the constants above)

    from dgl_deploy.data.decoder import VideoFile

    with VideoFile(path) as video:
        timeline = video.timeline
        wanted = preview_frames(timeline.times, segment or (0.0, timeline.duration))
        side = min(PREVIEW_SIDE, video.stream.codec_context.width, video.stream.codec_context.height) or PREVIEW_SIDE
        with atomic_path(Path(target)) as tmp, av.open(str(tmp), "w", format="mp4",
                                                      options={"movflags": "+faststart"}) as out:
            stream = None
            for index, rgb in video.frames(wanted, side, crop=False):
                rgb = rgb[: len(rgb) // 2 * 2, : rgb.shape[1] // 2 * 2]  # yuv420p needs even sides
                if stream is None:
                    stream = out.add_stream("libx264", rate=PREVIEW_FPS, options={"preset": "veryfast",
                                                                                   "crf": str(PREVIEW_CRF)})
                    stream.width, stream.height, stream.pix_fmt = rgb.shape[1], rgb.shape[0], "yuv420p"
                    stream.codec_context.time_base = Fraction(1, 1000)
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                frame.pts = round((timeline.times[index] - timeline.times[wanted[0]]) * 1000)
                frame.time_base = Fraction(1, 1000)
                out.mux(stream.encode(frame))
            if stream is not None:
                out.mux(stream.encode())


__all__ = ["write_preview", "preview_frames", "PREVIEW_SECONDS", "PREVIEW_SIDE", "PREVIEW_FPS"]
