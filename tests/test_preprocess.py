"""One preprocessing path (numpy/Pillow, no torch) for every consumer: the in-process decoder, the decoder
process (query --video, serve uploads, Ray), the parallel loader (embed, eval, training) give identical
uint8 pixels, and they match torchvision's antialiased bicubic (the old torch path) to 1 level."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from dgl_deploy.data.loader import iter_video_batches
from dgl_deploy.data.video import decode_frames, read_frames, resize_center_crop

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


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A lossless 10-frame 90x160 (16:9) video."""
    path = tmp_path_factory.mktemp("pre") / "zone.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt, stream.options = 160, 90, "yuv444p", {"qp": "0"}
        for frame in _zone_plate(90, 160, 10):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


def test_every_path_gives_identical_pixels(clip: Path) -> None:
    direct = decode_frames(clip, FRAMES, SIZE)
    assert direct.shape == (FRAMES, SIZE, SIZE, 3) and direct.dtype == np.uint8
    np.testing.assert_array_equal(read_frames(clip, FRAMES, SIZE), direct)  # decoder process
    for isolate in (True, False):  # the loader of embed, eval and training
        batches = list(iter_video_batches([clip], FRAMES, SIZE, batch_size=1, workers=1, isolate=isolate))
        np.testing.assert_array_equal(batches[0].frames[0], direct)


@pytest.mark.parametrize("shape", [(90, 160), (160, 90), (64, 64), (37, 101)])
def test_matches_open_clip_bicubic_antialias(shape: tuple[int, int]) -> None:
    frames = _zone_plate(*shape, 3)
    ours = resize_center_crop(frames, SIZE)
    x = TF.resize(torch.from_numpy(frames).permute(0, 3, 1, 2), [SIZE], interpolation=TF.InterpolationMode.BICUBIC,
                  antialias=True)
    theirs = TF.center_crop(x, [SIZE, SIZE]).permute(0, 2, 3, 1).numpy()
    diff = np.abs(ours.astype(int) - theirs.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.25, (diff.max(), diff.mean())  # rounding: 1 level at most
