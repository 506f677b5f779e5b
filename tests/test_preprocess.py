"""One preprocessing path (no torch) for every consumer: the in-process decoder, the decoder process (query
--video, serve uploads, Ray), the parallel loader (embed, eval, training) give identical uint8 pixels, and they
match torchvision's antialiased bicubic (open_clip's own preprocessing) on frames decoded independently (zone
plates: all high frequencies, the worst case): to 1 level where the decoder resizes RGB with Pillow (4:4:4
sources), and within a few levels where swscale resizes 4:2:0 video in YUV (luma: a grey plate, since colour
detail above the 4:2:0 chroma resolution differs between any two resamplers)."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from dgl_deploy.data.frame_request import FrameRequest
from dgl_deploy.data.loader import iter_video_batches
from dgl_deploy.data.video import decode_frames, read_frames

FRAMES, SIZE = 6, 32


def _zone_plate(height: int, width: int, count: int) -> np.ndarray:
    """(N, H, W, 3) uint8 frames full of high frequencies: any filter or offset difference shows."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    r2 = (xx - width / 2) ** 2 + (yy - height / 2) ** 2
    frames = []
    for t in range(count):
        v = (127.5 + 127.5 * np.cos(r2 * (0.01 + 0.002 * t))).astype(np.uint8)
        frames.append(np.stack([v, v[::-1], 255 - v[:, ::-1]], -1))
    return np.stack(frames)


def _lossless(path: Path, frames: np.ndarray, pix_fmt: str = "yuv444p") -> Path:
    """`frames` (N, H, W, 3) as a lossless H.264 (qp 0) clip at 10 fps."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt, stream.options = pix_fmt, {"qp": "0"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A lossless 10-frame 90x160 (16:9) video."""
    return _lossless(tmp_path_factory.mktemp("pre") / "zone.mp4", _zone_plate(90, 160, 10))


def test_every_path_gives_identical_pixels(clip: Path) -> None:
    direct = decode_frames(FrameRequest(clip, FRAMES, SIZE))
    assert direct.shape == (FRAMES, SIZE, SIZE, 3) and direct.dtype == np.uint8
    np.testing.assert_array_equal(read_frames(FrameRequest(clip, FRAMES, SIZE)), direct)  # decoder process
    for isolate in (True, False):  # the loader of embed, eval and training
        batches = list(iter_video_batches([clip], FRAMES, SIZE, batch_size=1, workers=1, isolate=isolate))
        np.testing.assert_array_equal(batches[0].frames[0], direct)


def _against_open_clip(path: Path) -> np.ndarray:
    """|ours - torchvision's antialiased bicubic resize + centre crop of the full-size RGB frames|, (3, S, S, 3)."""
    full = np.stack([frame.to_ndarray(format="rgb24") for frame in av.open(str(path)).decode(video=0)])
    ours = decode_frames(FrameRequest(path, 3, SIZE))
    x = TF.resize(torch.from_numpy(full).permute(0, 3, 1, 2), [SIZE], interpolation=TF.InterpolationMode.BICUBIC,
                  antialias=True)
    theirs = TF.center_crop(x, [SIZE, SIZE]).permute(0, 2, 3, 1).numpy()
    return np.abs(ours.astype(int) - theirs.astype(int))


@pytest.mark.parametrize("shape", [(90, 160), (160, 90), (64, 64), (37, 101), (48, 72), (144, 176)])
def test_matches_open_clip_bicubic_antialias(tmp_path: Path, shape: tuple[int, int]) -> None:
    diff = _against_open_clip(_lossless(tmp_path / "zone.mp4", _zone_plate(*shape, 3)))
    assert diff.max() <= 1 and diff.mean() < 0.25, (diff.max(), diff.mean())  # rounding: 1 level at most


@pytest.mark.parametrize("shape", [(90, 160), (160, 90), (64, 64), (48, 72), (144, 176)])
def test_420_video_resized_in_yuv_stays_close_to_open_clip(tmp_path: Path, shape: tuple[int, int]) -> None:
    grey = np.repeat(_zone_plate(*shape, 3)[..., :1], 3, axis=-1)
    diff = _against_open_clip(_lossless(tmp_path / "zone.mp4", grey, "yuv420p"))
    assert diff.max() <= 16 and diff.mean() < 2.5, (diff.max(), diff.mean())  # measured: max 12, mean <= 1.95
