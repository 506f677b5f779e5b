"""`reference` frame sampling against a straight port of the DGL reference code's evaluation video path
(github knightyxp/DGL: dataloaders/decode.py RawVideoExtractorpyAV.get_video_data with is_train=False,
sampling.py uniform_sampling, the loaders' int() cut of segment seconds, torchvision CenterCrop and
TensorNormalize), run on real encoded clips: PyAV/libx264 with B-frames at 29.97, 23.976 and 3 fps, landscape
and portrait, an MPEG-4 AVI (MSVD-style), a 3 s clip with fewer frames than T, DiDeMo's [0, 31] s and
ActivityNet's [0, ceil(duration)] segments and a mid-clip one.

Frame indices must be equal. Pixels: the reference and we both decode with PyAV and convert YUV to RGB with
FFmpeg's swscale. Measured difference: 0 levels (bit-identical uint8 frames, so model inputs equal to float
rounding) with PyAV 18.1.0 on every clip here.
PIXEL_TOLERANCE allows 1 level (of 255) for other FFmpeg builds' conversion rounding.

The clips' shorter side equals the crop size, as in the reference's data (compress_video.py: shorter side
224), so our bicubic resize is the identity and only the crop remains, which is all the reference does.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from torchvision.transforms import CenterCrop
from torchvision.transforms.functional import normalize as tv_normalize

from dgl_deploy.data.decoder import VideoFile
from dgl_deploy.data.frame_request import FrameRequest
from dgl_deploy.data.sampling import sample_indices
from dgl_deploy.data.video import decode_frames
from dgl_deploy.model.pixels import normalize

T = 12  # max_frames of every reference script
PIXEL_TOLERANCE = 1  # uint8 levels; measured 0 (module docstring)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


# ---- the reference, ported line by line (torch only where the reference uses it) -------------------------
def reference_uniform_sampling(clip_length: int, num_frames: int) -> np.ndarray:
    """sampling.py uniform_sampling (data_length=1, twice_sample=False)."""
    if num_frames > clip_length:
        tick = num_frames / float(clip_length)
        offsets = [int(tick / 2.0 + tick * x) for x in range(clip_length)]
    else:
        offsets = np.clip(np.arange(0, clip_length), 0, num_frames - 1)
    return np.array(offsets)


def reference_segment(start: float, end: float) -> tuple[int, int]:
    """The ActivityNet/DiDeMo loaders' _get_rawvideo: whole seconds, end + 1 when equal."""
    start_time, end_time = int(start), int(end)
    start_time = start_time if start_time >= 0.0 else 0.0
    end_time = end_time if end_time >= 0.0 else 0.0
    if start_time > end_time:
        start_time, end_time = end_time, start_time
    elif start_time == end_time:
        end_time = end_time + 1
    return start_time, end_time


def reference_video(path: Path, size: int, segment: tuple[float, float] | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """decode.py get_video_data (evaluation): (T, 3, size, size) model input and the absolute frame indices."""
    with av.open(str(path)) as container:
        video_stream = container.streams.video[0]
        num_frames, fps = video_stream.frames, float(video_stream.average_rate)
        all_frames, start_ = [], 0
        if segment is None:
            for frame in container.decode(video=0):
                all_frames.append(frame)
        else:
            start_time, end_time = reference_segment(*segment)
            start_, end_ = max(0, int(start_time * fps)), min(int(end_time * fps), num_frames)
            for cnt, frame in enumerate(container.decode(video=0)):
                if start_ <= cnt <= end_:
                    all_frames.append(frame)
        num_frames = min(num_frames, len(all_frames))
        inds = reference_uniform_sampling(T, num_frames)
        sampled = [all_frames[i].to_rgb().to_ndarray() for i in inds]
    video = torch.stack([torch.from_numpy(f).permute(2, 0, 1).contiguous().float().div_(255) for f in sampled])
    video = tv_normalize(CenterCrop(size)(video), mean=CLIP_MEAN, std=CLIP_STD)
    return video, inds + start_


# ---- clips ----------------------------------------------------------------------------------------------
def encode(path: Path, rate: Fraction, count: int, height: int, width: int, codec: str = "libx264") -> Path:
    """`count` distinct frames (moving gradients + seeded noise), default encoder settings (B-frames)."""
    rng = np.random.default_rng(count)
    y, x = np.mgrid[0:height, 0:width]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        for i in range(count):
            frame = np.stack([(x * 255 // width + 7 * i) % 256, (y * 255 // height + 3 * i) % 256,
                              (3 * (x + y) + 5 * i) % 256], axis=-1) + rng.integers(0, 24, (height, width, 1))
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.clip(frame, 0, 255).astype(np.uint8), format="rgb24")))
        container.mux(stream.encode())
    return path


CLIPS = {  # name: (rate, frames, height, width, codec, crop size)
    "ntsc.mp4": (Fraction(30000, 1001), 1004, 32, 64, "libx264", 32),  # 33.5 s: longer than DiDeMo's 31 s
    "film.mp4": (Fraction(24000, 1001), 240, 48, 32, "libx264", 32),  # portrait, 10 s
    "prepared.mp4": (Fraction(3), 15, 224, 300, "libx264", 224),  # compress_video.py output: 3 fps, shorter side 224
    "short.mp4": (Fraction(3), 9, 300, 224, "libx264", 224),  # 3 s at 3 fps: 9 frames < T
    "msvd.avi": (Fraction(3), 12, 224, 398, "mpeg4", 224),  # exactly T frames
}
CASES = [
    ("ntsc.mp4", None), ("ntsc.mp4", (0.0, 31.0)), ("ntsc.mp4", (0.0, 34.0)), ("film.mp4", None),
    ("film.mp4", (0.0, 8.0)), ("film.mp4", (2.5, 7.9)), ("prepared.mp4", None), ("short.mp4", None),
    ("short.mp4", (0.0, 31.0)), ("msvd.avi", None),
]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("reference_clips")
    for name, (rate, count, height, width, codec, _) in CLIPS.items():
        encode(root / name, rate, count, height, width, codec)
    return root


@pytest.mark.parametrize(("name", "segment"), CASES)
def test_reference_sampling_matches_the_reference_code(clips: Path, name: str, segment: tuple[float, float] | None) -> None:
    size = CLIPS[name][-1]
    expected, expected_indices = reference_video(clips / name, size, segment)
    with VideoFile(clips / name) as video:
        indices = sample_indices(video.timeline.times, video.timeline.fps, T, segment, "reference")
    assert indices.tolist() == expected_indices.tolist()
    frames = decode_frames(FrameRequest(clips / name, T, size, segment, "reference"))  # (T, S, S, 3) uint8
    levels = (normalize(frames) - expected).abs() * torch.tensor(CLIP_STD).view(1, 3, 1, 1) * 255  # model input, in pixel levels
    assert levels.max().item() <= PIXEL_TOLERANCE + 1e-3


def test_short_clip_repeats_its_last_frame_like_the_reference(clips: Path) -> None:
    """9 frames for T = 12: the reference pads with the last frame (its video mask is never read by DGL)."""
    with VideoFile(clips / "short.mp4") as video:
        indices = sample_indices(video.timeline.times, video.timeline.fps, T, None, "reference")
    assert indices.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 8, 8]
    frames = decode_frames(FrameRequest(clips / "short.mp4", T, 224, None, "reference"))
    assert all(np.array_equal(frames[8], frames[i]) for i in (9, 10, 11))
