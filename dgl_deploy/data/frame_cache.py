"""On-disk cache of decoded frames: decode each video once, memory-map it on every later epoch.

One `.npy` file (T, S, S, 3) uint8 per `FrameRequest`. The key hashes the absolute path, the file's size and
mtime (ns) and the rest of the request (frames, image size, segment, frame sampling), so editing,
replacing or touching a video — or changing the settings — misses the old entry. Writes are atomic
(files.atomic_path: temp file in the same directory + os.replace), so concurrent writers and crashes never leave a
half-written entry behind. Stale entries are not deleted; remove the directory to reclaim space.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from dgl_deploy.data.frame_request import FrameRequest
from dgl_deploy.files import atomic_path

_FORMAT = 2  # bump when the decoded pixels change (sampling formula, resize), to miss old entries (2: PyAV + swscale)


class FrameCache:
    """Decoded-frame cache rooted at `root` (created on demand)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def entry(self, request: FrameRequest) -> Path:
        """The cache file for `request` on its video's current version (raises OSError if the video is missing)."""
        source = request.path.resolve()
        stat = source.stat()
        settings = [_FORMAT, str(source), stat.st_size, stat.st_mtime_ns, request.num_frames, request.image_size,
                    list(request.segment) if request.segment else None, request.sampling]
        key = hashlib.sha256(json.dumps(settings).encode()).hexdigest()
        return self.root / key[:2] / f"{key}.npy"

    def get(self, request: FrameRequest) -> np.ndarray | None:
        """Memory-mapped (T, S, S, 3) uint8 frames, or None on a miss (or a missing source file)."""
        try:
            return np.load(self.entry(request), mmap_mode="r")
        except (OSError, ValueError, EOFError):  # no entry / source gone / unreadable or empty entry: decode again
            return None

    def put(self, request: FrameRequest, frames: np.ndarray) -> Path:
        """Store (T, S, S, 3) uint8 `frames` atomically; returns the entry path."""
        target = self.entry(request)
        with atomic_path(target) as tmp, tmp.open("wb") as f:
            np.save(f, np.ascontiguousarray(frames, dtype=np.uint8))
        return target
