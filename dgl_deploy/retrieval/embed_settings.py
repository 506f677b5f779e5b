"""How an embedding job runs (`EmbedSettings`) and which rows it makes per video (`segmentation`: one per video,
or one per window with `dgl embed --window/--stride/--scenes`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from dgl_deploy.data.windows import DEFAULT_SCENE_THRESHOLD, Segmentation
from dgl_deploy.errors import DGLError

SCENES_WINDOW = 10.0  # seconds: the window when scenes are asked for without one


@dataclass(frozen=True)
class EmbedSettings:
    """How to run an embedding job (all but `workers` and `timeout` fix the output and must match on resume)."""

    batch_size: int = 16  # videos per encoder call
    workers: int = 2  # decoding workers (each a crash-isolated process)
    chunk_size: int = 256  # videos per resumable chunk file
    fp16: bool = False  # store float16 rows (half the size)
    timeout: float = 60.0  # seconds allowed to decode one file (with segments: one group of its windows)
    segments: Segmentation | None = None  # one row per window of each video; None: one row per video

    def __post_init__(self) -> None:
        """Refuse values no job can run with (library callers get the CLI's checks too)."""
        for name in ("batch_size", "workers", "chunk_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DGLError(f"EmbedSettings: {name} must be a whole number >= 1, got {value!r}")
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float)) or \
                not 0 < self.timeout < math.inf:
            raise DGLError(f"EmbedSettings: timeout must be a number of seconds > 0, got {self.timeout!r}")
        if not isinstance(self.fp16, bool):
            raise DGLError(f"EmbedSettings: fp16 must be True or False, got {self.fp16!r}")
        if self.segments is not None and not isinstance(self.segments, Segmentation):
            raise DGLError(f"EmbedSettings: segments must be a Segmentation or None, got {self.segments!r}")

    def record(self) -> dict[str, Any]:
        """The settings as the manifest records them (segments as `Segmentation.record`)."""
        return {**asdict(self), "segments": self.segments.record() if self.segments else None}


def segmentation(window: float | None = None, stride: float | None = None, scenes: bool = False,
                 scene_threshold: float = DEFAULT_SCENE_THRESHOLD) -> Segmentation | None:
    """The rows asked for by `dgl embed --window/--stride/--scenes` (and `dgl_deploy.embed_videos`): one per window
    of `window` seconds every `stride` (default: the window), cut at shots with `scenes` (window default
    SCENES_WINDOW); None: one row per video."""
    if window is None and not scenes:
        if stride is not None:
            raise DGLError("--stride needs --window (the length of each window, in seconds)")
        return None
    window = SCENES_WINDOW if window is None else window
    return Segmentation(window, window if stride is None else stride, scenes, scene_threshold)


__all__ = ["EmbedSettings", "segmentation", "SCENES_WINDOW"]
