"""Shot boundaries with PySceneDetect's ContentDetector (`dgl embed --scenes`), an optional extra:
pip install 'dgl-deploy[scenes]' (scenedetect with headless OpenCV, whose wheels bundle FFmpeg).

PySceneDetect reads the file with OpenCV, at a reduced resolution, in pieces of `PIECE_FRAMES` frames; the
caller's `progress` runs after each piece, so a time limit can apply per piece instead of per file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dgl_deploy.errors import DGLError

INSTALL_HINT = "--scenes needs PySceneDetect and headless OpenCV: pip install 'dgl-deploy[scenes]'"
PIECE_FRAMES = 1000  # frames read between two `progress` calls


def require_scenedetect() -> None:
    """Refuse a --scenes job up front (one line) when the extra is not installed."""
    try:
        import cv2  # noqa: F401
        import scenedetect  # noqa: F401
    except ImportError:
        raise DGLError(INSTALL_HINT) from None


def detect_cuts(path: Path, threshold: float, progress: Callable[[], None]) -> list[float]:
    """The times (seconds, ascending) where a new shot starts, the start of the file excluded."""
    from scenedetect import ContentDetector, SceneManager, open_video

    video = open_video(str(path))
    manager = SceneManager()
    manager.add_detector(ContentDetector(threshold=threshold))
    while manager.detect_scenes(video, duration=PIECE_FRAMES) > 0:
        progress()
    return [start.frame_num / video.frame_rate for start, _ in manager.get_scene_list()[1:]]


__all__ = ["INSTALL_HINT", "require_scenedetect", "detect_cuts"]
