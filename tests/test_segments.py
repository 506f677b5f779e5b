"""Segments of long videos, data side: window arithmetic, shot merging, decoding each frame once for all the
windows of a file (in-process and in the isolated decoder), the ordered window loader, shot detection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dgl_deploy import DGLError
from dgl_deploy.data.decoder import VideoFile
from dgl_deploy.data.frame_request import FrameRequest
from dgl_deploy.data.loader import VideoFailure, WindowGroup, iter_window_groups
from dgl_deploy.data.long_clips import Shot, write_shots
from dgl_deploy.data.video import VideoError, decode_frames
from dgl_deploy.data.window_decode import WindowDecodeProcess, decode_windows
from dgl_deploy.data.windows import Segmentation, fixed_windows, merge_short_shots, shot_windows, windows_of


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """6 s at 10 fps: red circle 0-3 s, blue square 3-6 s."""
    return write_shots(tmp_path_factory.mktemp("segments") / "clip.mp4",
                       [Shot("red", "circle", 3.0), Shot("blue", "square", 3.0)], fps=10)


def _pairs(spans) -> list[tuple[float, float]]:  # noqa: ANN001
    return [tuple(span) for span in spans.tolist()]


@pytest.mark.parametrize(("duration", "expected"), [
    (7.0, [(0.0, 7.0)]),  # shorter than the window: one row for the whole file
    (10.0, [(0.0, 10.0)]),  # exactly one window
    (20.0, [(0.0, 10.0), (5.0, 15.0), (10.0, 20.0)]),  # exact multiple: no extra window
    (22.0, [(0.0, 10.0), (5.0, 15.0), (10.0, 20.0), (12.0, 22.0)]),  # last window aligned to the end
    (10.0000001, [(0.0, 10.0)]),  # float noise is not a second window
])
def test_fixed_windows(duration, expected) -> None:
    assert _pairs(fixed_windows(duration, 10.0, 5.0)) == expected


def test_fixed_windows_without_overlap_and_offset() -> None:
    assert _pairs(fixed_windows(25.0, 10.0, 10.0)) == [(0.0, 10.0), (10.0, 20.0), (15.0, 25.0)]
    assert _pairs(fixed_windows(12.0, 10.0, 10.0, offset=3.0)) == [(3.0, 15.0)]  # a last start 2 s < 10 s / 4 on: merged


@pytest.mark.parametrize(("duration", "window", "stride", "expected"), [
    (4.004, 4.0, 2.0, [(0.0, 4.004)]),  # carphone_pristine.mp4: not (0, 4) and (0.004, 4.004)
    (20.5, 10.0, 5.0, [(0.0, 10.0), (5.0, 15.0), (10.0, 20.5)]),  # 0.5 s < 5 s / 4 after the last start
    (21.25, 10.0, 5.0, [(0.0, 10.0), (5.0, 15.0), (10.0, 20.0), (11.25, 21.25)]),  # exactly a quarter: kept
])
def test_no_near_duplicate_last_window(duration, window, stride, expected) -> None:
    assert _pairs(fixed_windows(duration, window, stride)) == expected


def test_short_shots_merge_into_a_neighbour() -> None:
    assert merge_short_shots([(0, 1), (1, 5), (5, 5.5), (5.5, 9)], 2.5) == [(0, 5.5), (5.5, 9)]  # first into next
    assert merge_short_shots([(0, 1)], 2.5) == [(0, 1)]  # a lone short shot stays
    # long shots are split into windows, short ones merged (10 s window: shots under 2.5 s merge)
    assert _pairs(shot_windows(30.0, [4.0, 5.0, 12.0, 25.0], 10.0, 5.0)) == [
        (0.0, 5.0), (5.0, 12.0), (12.0, 22.0), (15.0, 25.0), (25.0, 30.0)]
    assert _pairs(windows_of(30.0, Segmentation(10.0, 10.0, scenes=True), [12.0])) == [
        (0.0, 12.0), (12.0, 22.0), (20.0, 30.0)]


@pytest.mark.parametrize("bad", [dict(window=0, stride=1), dict(window=5, stride=6), dict(window=float("inf"), stride=1),
                                 dict(window=5, stride=True)])
def test_segmentation_refuses_bad_numbers(bad) -> None:
    with pytest.raises(DGLError, match="segments:"):
        Segmentation(**bad)


def test_each_frame_decoded_once_across_overlapping_windows(clip, monkeypatch) -> None:
    decoded, converted = [], []
    decode_from, convert = VideoFile._decode_from, VideoFile._convert

    def counting_decode(self, key):  # noqa: ANN001, ANN202
        for index, frame in decode_from(self, key):
            decoded.append(index)
            yield index, frame

    def counting_convert(self, frame, size, crop=True):  # noqa: ANN001, ANN202
        converted.append(frame.pts)
        return convert(self, frame, size, crop)

    monkeypatch.setattr(VideoFile, "_decode_from", counting_decode)
    monkeypatch.setattr(VideoFile, "_convert", counting_convert)
    segmentation = Segmentation(window=2.0, stride=1.0)  # windows share frames (e.g. frame 10 of 0-2 s and 1-3 s)
    groups = list(decode_windows(clip, segmentation, 5, 16, max_frames=10))  # 2 windows per group
    spans = np.concatenate([g.spans for g in groups])
    assert spans.tolist() == [[0, 2], [1, 3], [2, 4], [3, 5], [4, 6]]
    assert [(g.first, g.total, g.last) for g in groups] == [(0, 5, False), (2, 5, False), (4, 5, True)]
    assert decoded == sorted(set(decoded))  # every frame decoded once, in one forward pass...
    assert len(converted) == len(set(converted))  # ...and each wanted frame converted once
    stacks = np.concatenate([g.frames for g in groups])  # (5, T, S, S, 3)
    assert stacks.shape == (5, 5, 16, 16, 3)
    assert 25 * 5 > len(converted)  # overlapping windows did share frames
    monkeypatch.undo()
    for stack, (start, end) in zip(stacks, spans, strict=True):  # the pixels of a per-window decode
        np.testing.assert_array_equal(stack, decode_frames(FrameRequest(clip, 5, 16, (start, end))))


def test_isolated_decoder_streams_and_survives_a_timeout(clip, tmp_path) -> None:
    segmentation = Segmentation(window=2.0, stride=2.0)
    with_limit = WindowDecodeProcess()
    try:
        with pytest.raises(VideoError, match="timed out"):
            list(with_limit.stream(clip, segmentation, 4, 16, timeout=1e-4))
        groups = list(with_limit.stream(clip, segmentation, 4, 16, timeout=60))  # restarted
        assert np.concatenate([g.spans for g in groups]).tolist() == [[0, 2], [2, 4], [4, 6]]
        (tmp_path / "text.mp4").write_text("not a video\n" * 10)
        with pytest.raises(VideoError, match="not a readable video"):
            list(with_limit.stream(tmp_path / "text.mp4", segmentation, 4, 16, timeout=60))
    finally:
        with_limit.close()


def test_window_loader_keeps_file_order_and_reports_failures(clip, tmp_path) -> None:
    (tmp_path / "empty.mp4").write_bytes(b"")
    paths = [clip, tmp_path / "empty.mp4", clip]
    items = list(iter_window_groups(paths, Segmentation(2.0, 2.0), 4, 16, workers=2, max_frames=4))
    assert [(i.index, type(i).__name__) for i in items] == [
        (0, "WindowGroup"), (0, "WindowGroup"), (0, "WindowGroup"), (1, "VideoFailure"),
        (2, "WindowGroup"), (2, "WindowGroup"), (2, "WindowGroup")]
    assert isinstance(items[3], VideoFailure) and "empty" in items[3].reason
    assert all(isinstance(i, WindowGroup) and len(i.stacks.frames) == 1 for i in items if i.index != 1)


def test_shots_cut_at_hard_cuts(tmp_path) -> None:
    pytest.importorskip("cv2", reason="--scenes needs headless OpenCV: pip install 'dgl-deploy[scenes]'")
    pytest.importorskip("scenedetect", reason="--scenes needs PySceneDetect: pip install 'dgl-deploy[scenes]'")
    path = write_shots(tmp_path / "cuts.mp4", [Shot("red", "circle", 4.0, background="green"),
                                               Shot("blue", "square", 4.0, background="magenta"),
                                               Shot("red", "triangle", 4.0, background="yellow")], fps=10)
    groups = list(decode_windows(path, Segmentation(10.0, 10.0, scenes=True), 4, 16))
    assert np.concatenate([g.spans for g in groups]).tolist() == [[0, 4], [4, 8], [8, 12]]  # 2 cuts: 3 shots


def test_scenes_without_the_extra_is_one_line(monkeypatch) -> None:
    import sys

    from dgl_deploy.data.scenes import require_scenedetect

    monkeypatch.setitem(sys.modules, "scenedetect", None)  # as if not installed
    with pytest.raises(DGLError, match=r"pip install 'dgl-deploy\[scenes\]'"):
        require_scenedetect()
