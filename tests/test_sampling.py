"""Frame-sampling modes: the `reference` rule on hand-worked cases, mode names checked everywhere they enter
(decoder, cache key, training config, recorded model config). Parity with the reference code itself:
tests/test_sampling_reference.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dgl_deploy.data.frame_cache import FrameCache
from dgl_deploy.data.frame_request import FrameRequest
from dgl_deploy.data.sampling import check_sampling, frame_indices, reference_indices
from dgl_deploy.data.video import decode_frames
from dgl_deploy.errors import DGLError
from dgl_deploy.training.config import TrainConfig


def test_reference_rule_by_hand() -> None:
    # 40 frames, T = 12: tick 10/3, centres int(5/3 + 10/3 i)
    assert reference_indices(40, 10.0, 12).tolist() == [1, 5, 8, 11, 15, 18, 21, 25, 28, 31, 35, 38]
    assert reference_indices(12, 10.0, 12).tolist() == list(range(12))  # n == T: every frame once
    assert reference_indices(5, 10.0, 8).tolist() == [0, 1, 2, 3, 4, 4, 4, 4]  # n < T: the last frame repeats
    assert reference_indices(40, 10.0, 1).tolist() == [20]
    # DiDeMo's [0, 31] s at 29.97 fps: frames 0 .. int(31 * 29.97) = 929 (both ends), 930 frames, tick 77.5
    assert reference_indices(1004, 30000 / 1001, 12, (0.0, 31.0)).tolist() == [
        38, 116, 193, 271, 348, 426, 503, 581, 658, 736, 813, 891]
    assert reference_indices(40, 10.0, 2, (1.9, 2.5)).tolist() == [12, 18]  # whole seconds: [1, 2] -> frames 10..20
    assert reference_indices(40, 10.0, 2, (2.2, 2.7)).tolist() == [22, 28]  # equal seconds: [2, 3] -> frames 20..30
    assert reference_indices(40, 10.0, 4, (2.0, 60.0)).tolist() == [22, 27, 32, 37]  # past the end: to the last frame
    with pytest.raises(ValueError, match="starts after the last frame"):
        reference_indices(40, 10.0, 4, (5.0, 9.0))
    assert frame_indices(40, 10.0, 12, sampling="reference").tolist() == reference_indices(40, 10.0, 12).tolist()


def test_unknown_mode_is_one_line_everywhere(tmp_path: Path) -> None:
    with pytest.raises(DGLError, match=r"^frame sampling: unknown frame sampling 'tsn' \(choose from uniform, reference\)$"):
        check_sampling("tsn")
    with pytest.raises(DGLError, match="unknown frame sampling 'tsn'"):
        decode_frames(FrameRequest(tmp_path / "missing.mp4", 4, 32, None, "tsn"))  # the mode is checked before the file
    with pytest.raises(DGLError, match="training setting frame_sampling: unknown frame sampling 'tsn'"):
        TrainConfig(frame_sampling="tsn")


def test_cache_entries_are_per_mode(tmp_path: Path) -> None:
    video = tmp_path / "a.mp4"
    video.write_bytes(b"x")
    cache = FrameCache(tmp_path / "cache")
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    cache.put(FrameRequest(video, 2, 8, None, "reference"), frames)
    assert cache.get(FrameRequest(video, 2, 8)) is None and cache.get(FrameRequest(video, 2, 8, None, "reference")) is not None
    assert cache.entry(FrameRequest(video, 2, 8)) == cache.entry(FrameRequest(video, 2, 8, None, "uniform"))
