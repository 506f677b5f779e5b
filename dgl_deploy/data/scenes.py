"""Shot boundaries with PySceneDetect's ContentDetector (`dgl embed --scenes`), an optional extra:
pip install 'dgl-deploy[scenes]' (scenedetect with headless OpenCV, whose wheels bundle FFmpeg).

PySceneDetect reads the file with its PyAV backend (the decoder of `data.decoder`, so its frame numbers are the
timeline's frame indices), at a reduced resolution, in pieces of `PIECE_FRAMES` frames; the caller's `progress`
runs after each piece, so a time limit can apply per piece instead of per file. The caller turns the frame
numbers into times with the file's timeline (variable frame rates included).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dgl_deploy.errors import DGLError
from dgl_deploy.extras import missing_hint

PIECE_FRAMES = 1000  # frames read between two `progress` calls


def require_scenedetect() -> None:
    """Refuse a --scenes job up front (one line) when the extra is not installed."""
    try:
        import cv2  # noqa: F401
        import scenedetect  # noqa: F401
    except ImportError as exc:
        raise DGLError(missing_hint(exc, "scenedetect")) from None


def detect_cuts(path: Path, threshold: float, progress: Callable[[], None]) -> list[int]:
    """The frames (indices in presentation order, ascending) where a new shot starts, the first excluded."""
    from scenedetect import ContentDetector, SceneManager, open_video

    video = open_video(str(path), backend="pyav")
    manager = SceneManager()
    manager.add_detector(ContentDetector(threshold=threshold))
    while manager.detect_scenes(video, duration=PIECE_FRAMES) > 0:
        progress()
    return [start.frame_num for start, _ in manager.get_scene_list()[1:]]


__all__ = ["require_scenedetect", "detect_cuts"]
