"""Frame sampling, resizing, normalisation and error handling of dgl_deploy.data.video."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from dgl_deploy.data.frame_request import FrameRequest
from dgl_deploy.data.sampling import frame_indices
from dgl_deploy.data.synthetic import COLORS, _write_video, make_synthetic, write_broken_files
from dgl_deploy.data.video import DecodeProcess, VideoError, decode_frames, read_frames
from dgl_deploy.model.pixels import normalize

STEP = 6  # gray level per frame index in ramp clips


def ramp_clip(path: Path, num_frames: int, fps: int = 10, size: tuple[int, int] = (48, 64)) -> Path:
    """A clip whose frame i is uniformly gray STEP * i, so decoded frames reveal their index."""
    levels = (np.arange(num_frames) * STEP).astype(np.uint8)
    _write_video(path, np.broadcast_to(levels[:, None, None, None], (num_frames, *size, 3)).copy(), fps)
    return path


def decoded_indices(frames: np.ndarray) -> np.ndarray:
    """Frame indices of (T, S, S, 3) ramp frames."""
    return np.rint(frames.reshape(len(frames), -1).mean(1) / STEP).astype(int)


def test_frame_indices_formula() -> None:
    assert frame_indices(40, 10.0, 12).tolist() == np.rint(np.linspace(0, 39, 12)).astype(int).tolist()
    short = frame_indices(5, 10.0, 12)  # fewer frames than T: repeats, still covers both ends
    assert short.tolist() == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4]
    assert frame_indices(40, 10.0, 4, (1.0, 2.0)).tolist() == [10, 13, 16, 19]
    assert frame_indices(40, 10.0, 3, (9.0, 20.0)).tolist() == [39, 39, 39]  # past the end: clamps
    assert frame_indices(40, 10.0, 1).tolist() == [0]
    with pytest.raises(ValueError):
        frame_indices(40, 10.0, 4, (2.0, 1.0))


@pytest.mark.parametrize(("num_frames", "segment"), [(40, None), (5, None), (40, (1.0, 2.0))])
def test_sampled_frames_are_the_expected_frames(tmp_path: Path, num_frames: int, segment: tuple | None) -> None:
    path = ramp_clip(tmp_path / "ramp.mp4", num_frames)
    frames = decode_frames(FrameRequest(path, 12, 32, segment))
    assert frames.shape == (12, 32, 32, 3) and frames.dtype == np.uint8
    assert decoded_indices(frames).tolist() == frame_indices(num_frames, 10.0, 12, segment).tolist()


def test_shape_colour_and_position(tmp_path: Path) -> None:
    annotations = make_synthetic(tmp_path, videos=3, seed=3, size=(64, 64), seconds=2.0, fps=10)
    for row in map(json.loads, annotations.read_text().splitlines()):
        meta = row["meta"]
        frames = read_frames(FrameRequest(tmp_path / row["video"], 4, 64)).astype(int)  # (T, 64, 64, 3), no resize
        color = np.array(COLORS[meta["color"]])
        for frame, index in zip(frames, frame_indices(meta["num_frames"], meta["fps"], 4), strict=False):
            ys, xs = np.nonzero(np.abs(frame - color).max(-1) < 40)
            t = index / (meta["num_frames"] - 1)
            expected = (1 - t) * np.array(meta["start"]) + t * np.array(meta["end"])
            assert len(xs) > 20
            centre = [(xs.min() + xs.max()) / 2, (ys.min() + ys.max()) / 2]  # bounding box centre: any shape
            assert np.abs(centre - expected).max() < 2.5, (row["video"], index)


def test_resize_shorter_side_then_centre_crop(tmp_path: Path) -> None:
    wide = np.zeros((4, 32, 64, 3), np.uint8)
    wide[:, :, 16:48] = 255  # white centre square of a 2:1 frame
    _write_video(tmp_path / "wide.mp4", wide, 10)
    frames = decode_frames(FrameRequest(tmp_path / "wide.mp4", 2, 16))  # 32x64 -> 16x32 -> crop 16x16 = all white
    assert frames.shape == (2, 16, 16, 3)
    assert frames[:, :, 1:-1].min() > 240 and frames.min() > 200  # bicubic bleeds a little at the crop edge


def test_normalize_matches_clip_constants() -> None:
    frames = torch.zeros(2, 3, 8, 8, 3, dtype=torch.uint8)
    frames[..., 0] = 255
    out = normalize(frames)
    assert out.shape == (2, 3, 3, 8, 8) and out.dtype == torch.float32
    mean, std = np.array(OPENAI_DATASET_MEAN), np.array(OPENAI_DATASET_STD)
    expected = (np.array([1.0, 0.0, 0.0]) - mean) / std
    assert np.allclose(out[0, 0, :, 0, 0].numpy(), expected, atol=1e-6)
    assert torch.equal(normalize(frames.numpy()), out)


def audio_only(path: Path) -> Path:
    """An mp4 holding one second of silent AAC audio and no video stream."""
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        for index in range(16):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, index * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


@pytest.mark.timeout(60)
def test_broken_files_raise_one_line_video_errors(tmp_path: Path) -> None:
    expected = write_broken_files(tmp_path)
    expected |= {"missing.mp4": "file not found", audio_only(tmp_path / "audio.mp4").name: "no video stream (audio-only"}
    for name, reason in expected.items():
        if reason is None:
            assert read_frames(FrameRequest(tmp_path / name, 4, 32)).shape == (4, 32, 32, 3)
            continue
        with pytest.raises(VideoError) as info:
            read_frames(FrameRequest(tmp_path / name, 4, 32))
        assert info.value.path == tmp_path / name and info.value.reason.startswith(reason)
        assert name in str(info.value) and "\n" not in str(info.value)


def segfault(pid: int) -> None:
    """Deliver SIGSEGV to a stopped process, as if the decoder had crashed."""
    os.kill(pid, signal.SIGSEGV)
    os.kill(pid, signal.SIGCONT)


@pytest.mark.timeout(60)
def test_hang_and_crash_become_errors_and_the_worker_restarts(tmp_path: Path) -> None:
    path = ramp_clip(tmp_path / "ramp.mp4", 10)
    with DecodeProcess() as decoder:
        assert decoder.decode(FrameRequest(path, 2, 16)).shape == (2, 16, 16, 3)
        os.kill(decoder._proc.pid, signal.SIGSTOP)  # a decoder stuck forever
        with pytest.raises(VideoError, match="timed out after 0.5 s"):
            decoder.decode(FrameRequest(path, 2, 16), timeout=0.5)
        assert decoder.decode(FrameRequest(path, 2, 16)).shape == (2, 16, 16, 3)  # fresh worker
        pid = decoder._proc.pid
        os.kill(pid, signal.SIGSTOP)
        threading.Timer(0.3, segfault, (pid,)).start()  # dies mid-file
        with pytest.raises(VideoError, match=r"crashed \(exit code -11\)"):
            decoder.decode(FrameRequest(path, 2, 16), timeout=30)
        assert decoder.decode(FrameRequest(path, 2, 16)).shape == (2, 16, 16, 3)
