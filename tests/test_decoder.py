"""The decoder on real codec output: the two camera clips in shared/real_videos and files made here in the
forms users have (variable frame rate with irregular timestamps, an AVI that holds frames, rotation metadata,
a 250-frame GOP, 10-bit, HEVC, VP9/AV1 WebM, MPEG-4 Part 2 and Cinepak AVI, 48/72 px, 176x144). Frames and
timestamps are checked against an independent decode (PyAV's plain `decode()` of every frame)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from dgl_deploy.data.decoder import VideoError, VideoFile
from dgl_deploy.data.frame_request import FrameRequest
from dgl_deploy.data.video import decode_frames
from dgl_deploy.data.window_decode import decode_windows
from dgl_deploy.data.windows import Segmentation
from tests.conftest import SHARED, require_shared

STEP = 8  # colour level per step of the frame index in the ramp clips: a decoded frame tells its index
VFR_TIMES = [0.0, 0.1, 0.15, 0.9, 1.0, 2.5, 2.6, 4.0, 4.05, 6.0, 7.5, 9.9, 10.0, 12.5, 13.0, 16.0, 19.0, 19.5]


def ramp(count: int, height: int, width: int) -> np.ndarray:
    """(N, H, W, 3) flat frames; frame i has red STEP * (i % 32) and green STEP * (i // 32) (i < 1024)."""
    index = np.arange(count)
    colour = np.stack([index % 32 * STEP, index // 32 * STEP, np.full(count, 128)], -1).astype(np.uint8)  # (N, 3)
    return np.broadcast_to(colour[:, None, None, :], (count, height, width, 3)).copy()


def level_index(frames: np.ndarray) -> np.ndarray:
    """Frame indices of decoded ramp frames (T, H, W, 3)."""
    mean = frames.reshape(len(frames), -1, 3).mean(1)  # (T, 3)
    return (np.rint(mean[:, 0] / STEP) + 32 * np.rint(mean[:, 1] / STEP)).astype(int)


def write(path: Path, frames: np.ndarray, times: list[float] | None = None, codec: str = "libx264",
          pix_fmt: str = "yuv420p", rate: int = 10, options: dict[str, str] | None = None,
          rotation: int = 0) -> Path:
    """Encode `frames` (N, H, W, 3) with PyAV; `times` (seconds) gives each frame's timestamp (default i / rate)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, options=options or {})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        if codec == "mpeg4":
            stream.bit_rate = 4_000_000  # its default rate leaves flat colours half-changed in P-frames
        if times is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation:
            stream.set_display_rotation(rotation)
        for index, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if times is not None:
                frame.pts, frame.time_base = round(times[index] * 1000), Fraction(1, 1000)
            else:
                frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def independent(path: Path) -> tuple[np.ndarray, list[np.ndarray]]:
    """Every frame's time (seconds from the first) and full-size RGB frame, by a plain PyAV decode."""
    with av.open(str(path)) as container:
        decoded = [(frame.time, frame.to_ndarray(format="rgb24")) for frame in container.decode(video=0)]
    times = np.array([t for t, _ in decoded])
    return times - times[0], [f for _, f in decoded]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("footage")


@pytest.mark.parametrize("container", ["mp4", "mkv", "avi"])
def test_vfr_times_windows_and_moments_follow_the_stream(made: Path, container: str) -> None:
    codec = "mpeg4" if container == "avi" else "libx264"
    path = write(made / f"vfr.{container}", ramp(len(VFR_TIMES), 64, 96), VFR_TIMES, codec=codec)
    truth, _ = independent(path)
    with VideoFile(path) as video:
        timeline = video.timeline
    assert timeline.from_stream
    np.testing.assert_allclose(timeline.times, truth, atol=2e-3)
    assert len(truth) == len(VFR_TIMES)
    groups = list(decode_windows(path, Segmentation(window=4.0, stride=2.0), 4, 32))
    spans = np.concatenate([g.spans for g in groups])  # (W, 2)
    frames = np.concatenate([g.frames for g in groups])  # (W, T, S, S, 3)
    assert spans[-1, 1] >= 0.95 * VFR_TIMES[-1]  # windows reach the real duration
    shown_until = np.append(truth[1:], np.inf)
    for (start, end), stack in zip(spans, frames, strict=True):  # each moment holds frames shown inside it
        held = level_index(stack)
        assert np.all(truth[held] < end) and np.all(shown_until[held] > start), (start, end, held)
    whole = level_index(decode_frames(FrameRequest(path, 6, 32)))  # uniform in time, not in frame index
    expected = [np.abs(truth - t).argmin() for t in np.linspace(0, truth[-1], 6)]
    assert np.abs(truth[whole] - truth[expected]).max() < 0.6, (whole, expected)


def test_avi_holding_frames_is_placed_in_time(made: Path) -> None:
    """An AVI writes a held frame as an empty packet: 8 frames over 29 s must still span the 29 s."""
    times = [0.0, 1.0, 5.0, 9.0, 14.0, 20.0, 26.0, 29.0]
    path = write(made / "held.avi", ramp(len(times), 48, 64), times, codec="mpeg4")
    with VideoFile(path) as video:
        assert video.timeline.times.tolist() == pytest.approx(times, abs=1e-3)
    spans = np.concatenate([g.spans for g in decode_windows(path, Segmentation(4.0, 2.0), 4, 32)])
    assert spans[-1, 1] >= 0.95 * 29.0 and spans[0, 0] == 0.0
    assert len(spans) <= 2 * len(times)  # windows that would repeat a held frame's row are merged


def test_rotated_phone_file_comes_out_upright(made: Path) -> None:
    upright = np.zeros((4, 96, 64, 3), np.uint8)  # portrait: white top half
    upright[:, :48] = 255
    stored = np.ascontiguousarray(np.rot90(upright, -1, axes=(1, 2)))  # the sensor's landscape frame
    path = write(made / "phone.mp4", stored, rotation=90)  # the player turns it 90 degrees counter-clockwise
    with av.open(str(path)) as container:
        assert next(container.decode(video=0)).rotation == 90
    frames = decode_frames(FrameRequest(path, 2, 32)).astype(int)
    assert frames[:, :12].min() > 200 and frames[:, -12:].max() < 50  # top white, bottom black: upright


def test_long_gop_is_decoded_once(made: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """250-frame GOP (x264's default key frame interval): windows take frames all over it, no GOP twice."""
    path = write(made / "gop.mp4", ramp(300, 32, 48), options={"g": "250", "keyint_min": "250",
                                                                 "sc_threshold": "0", "bf": "2"})
    decoded: list[int] = []
    decode_from = VideoFile._decode_from

    def counting(self: VideoFile, key: int):  # noqa: ANN202
        for index, frame in decode_from(self, key):
            decoded.append(index)
            yield index, frame

    monkeypatch.setattr(VideoFile, "_decode_from", counting)
    groups = list(decode_windows(path, Segmentation(window=4.0, stride=2.0), 8, 16, max_frames=16))
    assert decoded == sorted(set(decoded)) and len(decoded) <= 300
    truth_times, truth = independent(path)
    frames = np.concatenate([g.frames for g in groups])
    spans = np.concatenate([g.spans for g in groups])
    for (start, end), stack in zip(spans, frames, strict=True):
        held = level_index(stack)
        assert np.all((truth_times[held] >= start - 0.1) & (truth_times[held] < end)), (start, end, held)
    decoded.clear()
    decode_frames(FrameRequest(path, 4, 16))  # whole-video sampling seeks over the GOPs it does not need
    assert len(decoded) < 300


# codec, container, pixel format, (height, width), options
FORMATS = [
    ("libx264", "mp4", "yuv420p", (144, 176), {}),
    ("libx264", "mov", "yuv420p10le", (64, 96), {}),  # 10-bit
    ("libx265", "mp4", "yuv420p", (64, 96), {"x265-params": "log-level=error"}),
    ("libx265", "mkv", "yuv420p10le", (64, 96), {"x265-params": "log-level=error"}),
    ("libvpx-vp9", "webm", "yuv420p", (64, 96), {}),
    ("libsvtav1", "webm", "yuv420p", (64, 96), {"preset": "12"}),
    ("mpeg4", "avi", "yuv420p", (64, 96), {}),
    ("cinepak", "avi", "rgb24", (64, 96), {}),
    ("libx264", "mp4", "yuv420p", (48, 48), {}),  # decord could not read 48 or 72 px wide files
    ("libx264", "mp4", "yuv420p", (72, 72), {}),
]


@pytest.mark.parametrize(("codec", "container", "pix_fmt", "shape", "options"), FORMATS,
                         ids=[f"{c}-{k}-{p}-{s[1]}x{s[0]}" for c, k, p, s, _ in FORMATS])
def test_formats_users_have(made: Path, codec: str, container: str, pix_fmt: str, shape: tuple[int, int],
                            options: dict[str, str]) -> None:
    path = write(made / f"{codec}_{pix_fmt}_{shape[1]}.{container}", ramp(20, *shape), codec=codec,
                 pix_fmt=pix_fmt, options=options)
    truth_times, _ = independent(path)
    with VideoFile(path) as video:
        np.testing.assert_allclose(video.timeline.times, truth_times, atol=2e-3)
    frames = decode_frames(FrameRequest(path, 5, 32))
    assert frames.shape == (5, 32, 32, 3)
    assert level_index(frames).tolist() == [0, 5, 10, 14, 19]  # the right frames (rint(linspace(0, 19, 5)))


@pytest.mark.parametrize("name", ["bikes.mp4", "carphone_pristine.mp4"])
def test_real_clips_match_an_independent_decode(name: str) -> None:
    path = require_shared(SHARED / "real_videos" / name)
    truth_times, truth = independent(path)
    with VideoFile(path) as video:
        np.testing.assert_allclose(video.timeline.times, truth_times, atol=1e-6)
        wanted = np.array([0, 7, 8, 60, len(truth) - 1])
        got = dict(video.frames(wanted, 64))
    # the same frame as the independent decode: closer to it than to its neighbours
    for index in wanted:
        small = decode_frames(FrameRequest(path, 1, 64, (float(truth_times[index]), float(truth_times[index]) + 1e-3)))[0]
        np.testing.assert_array_equal(got[int(index)], small)


def test_audio_only_is_one_line(made: Path) -> None:
    from tests.test_video import audio_only

    with pytest.raises(VideoError, match="no video stream"):
        VideoFile(audio_only(made / "audio.m4a"))


def test_embedded_moments_carry_stream_times_and_the_manifest_names_untimed_files(made: Path, tmp_path: Path) -> None:
    """Through `embed_videos`: a VFR file's rows span its real duration; a raw H.264 stream (no timestamps) is
    placed at index / fps and listed in the manifest as such."""
    from dgl_deploy.retrieval.embed import EmbedSettings, embed_videos
    from dgl_deploy.retrieval.store import open_store
    from tests.test_segments_embed import ColourEncoder

    folder = tmp_path / "videos"
    folder.mkdir()
    write(folder / "vfr.mp4", ramp(len(VFR_TIMES), 64, 96), VFR_TIMES)
    raw = folder / "raw.h264"
    with av.open(str(raw), "w", format="h264") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height = 64, 48
        for index, image in enumerate(ramp(30, 48, 64)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    listing = tmp_path / "list.txt"
    listing.write_text("videos/vfr.mp4\nvideos/raw.h264\n")
    out = tmp_path / "emb.npy"
    embed_videos(listing, out, ColourEncoder(), EmbedSettings(segments=Segmentation(4.0, 2.0), workers=1))
    store = open_store(out)
    vfr = store.spans[[i == "videos/vfr.mp4" for i in store.ids]]
    assert vfr[-1, 1] >= 0.95 * VFR_TIMES[-1]
    assert store.manifest["times_from_frame_index"] == ["videos/raw.h264"]


def test_poster_frame_is_not_a_fade(made: Path) -> None:
    """Film footage fades in from black: the poster is the least uniform of the moment's sampled frames."""
    from dgl_deploy.data.video import representative
    from dgl_deploy.retrieval.serve_media import POSTER_CANDIDATES

    frames = ramp(30, 64, 96)
    frames[:12] = 0  # a fade from black
    frames[12:, 20:40, 30:60] = 255  # then a white box
    path = write(made / "fade.mp4", frames)
    candidates = decode_frames(FrameRequest(path, POSTER_CANDIDATES, 32))
    assert candidates[0].max() < 20  # the first frame is blank...
    assert candidates[representative(candidates)].max() > 200  # ...the poster is not


def test_timestamps_that_claim_days_give_rows_bounded_by_frames(made: Path) -> None:
    """20 frames whose timestamps spread over 55 hours: rows stay within 2 per frame, in bounded time; a claim
    beyond MAX_WINDOWS windows is refused in one line."""
    times = [i * 10_000.0 for i in range(20)]  # 190,000 s
    path = write(made / "days.mkv", ramp(20, 32, 48), times)
    groups = list(decode_windows(path, Segmentation(window=1.0, stride=1.0), 4, 16))
    spans = np.concatenate([g.spans for g in groups])
    assert len(spans) <= 2 * 20 and spans[-1, 1] >= times[-1]
    with pytest.raises(VideoError, match="timestamps span .* for 20 frames: .* use a longer --stride"):
        list(decode_windows(path, Segmentation(window=0.05, stride=0.05), 4, 16))
