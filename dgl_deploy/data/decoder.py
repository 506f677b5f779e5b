"""Video files as the model sees them, with PyAV (FFmpeg): each frame's time from the stream, chosen frames
decoded once and converted once, upright, resized and centre-cropped. The one decoder of every path (whole
videos, windows, posters, uploads, training); `video` and `window_decode` pick frames, this module reads them.

Time: `VideoFile.timeline` demuxes the video stream once (packets only, no decoding) and sorts the packets'
presentation timestamps: frame i of the file (presentation order) is shown from `times[i]` (seconds from the
first frame) until the next frame's time, so variable-frame-rate files (phones, screen captures, AVIs that hold
frames) place every frame at its real time. A file whose packets carry no timestamps falls back to index / fps
(`Timeline.from_stream` False, recorded in the embedding set's manifest). The duration is the last frame's time
plus its display duration: a header that claims more than the stream holds changes nothing.

Decoding: `VideoFile.frames(wanted, size)` runs forward through the file once, decoding every packet between
the wanted frames and converting only the wanted ones; where the next wanted frame lies behind a key frame
that is ahead of the decoder, it seeks to that key frame instead of decoding the stretch in between. Memory is
one decoded frame plus the converted ones the caller keeps, whatever the file's length or GOP size. The
decoder runs on one thread (`-j` parallelism is one process per file) and so does the conversion.

Pixels (`to_rgb`): the frame is resized so that its shorter side as a player shows it (sample aspect ratio
applied, upright) is S (torchvision's sizes: long side int(S * long / short)), turned upright (the display
matrix's rotation) and centre-cropped (offsets round((side - S) / 2)). 8-bit 4:2:0 frames (nearly all video)
are resized by swscale's bicubic (antialiased when shrinking) in their own YUV format, then converted to RGB by
swscale's plain 4:2:0 converter: a fraction of the CPU of converting the full frame and resizing RGB, within
the project's pixel bound (figures: benchmarks/notes.md, pixels). Not swscale's one-step resize + convert to
RGB: its scaled YUV-to-RGB path comes out about one level brighter.
Other formats (10-bit, 4:2:2, 4:4:4, RGB, palette) are converted to RGB at full size, then resized by Pillow's
bicubic (the filter of open_clip's own preprocessing) over the box the crop keeps. A frame already at the size
is not resampled at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image

from dgl_deploy.errors import DGLError

YUV420_FORMATS = ("yuv420p", "yuvj420p")  # 8-bit 4:2:0 pixel formats resized in YUV before the RGB conversion


class VideoError(DGLError):
    """A video file that cannot be decoded; `path` names it and `reason` says why (one line)."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def decoder_message(exc: BaseException) -> str:
    """A decoder error's first line, without FFmpeg's "[Errno N] " prefix and the file name (<= 160 chars)."""
    text = getattr(exc, "strerror", None) or str(exc).strip()
    line = str(text).splitlines()[0] if text else type(exc).__name__
    return line[:160]


def check_file(path: Path) -> None:
    """Cheap checks before any decoder sees the file."""
    if not path.exists():
        raise VideoError(path, "file not found")
    if not path.is_file():
        raise VideoError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise VideoError(path, "empty file (0 bytes)")


@dataclass(frozen=True)
class Timeline:
    """When each frame of a file is shown (module docstring)."""

    times: np.ndarray  # (N,) float64: seconds from the first frame, ascending, presentation order
    keys: np.ndarray  # (K,) int64: indices of the key frames, ascending (0 always)
    duration: float  # seconds: the last frame's time plus its display duration
    fps: float  # the container's average frame rate (index-based sampling, and the fallback)
    from_stream: bool  # times are the stream's presentation timestamps (False: index / fps)

    def __len__(self) -> int:
        return len(self.times)


@dataclass
class _Packets:
    """What the demuxing pass collects."""

    pts: list[int]  # presentation timestamps (time base units); None-free
    keys: list[int]  # the same packets' key flags (0/1)
    last_duration: int  # display duration of the packet with the highest pts (0: unknown)
    complete: bool  # every packet had a timestamp
    held: int = 0  # empty packets: frames an AVI holds (the previous frame stays on screen)


class VideoFile:
    """One open video file: its `timeline` and `frames`. Use as a context manager (or call `close`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        check_file(self.path)
        self._open()
        self._pts = np.zeros(0, np.int64)  # (N,) the frames' timestamps, presentation order (time base units)
        self._pts_index: dict[int, int] = {}  # timestamp -> frame index
        try:
            self.timeline = self._timeline()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        try:
            self.container = av.open(str(self.path), metadata_errors="ignore")
        except (av.FFmpegError, UnicodeDecodeError, ValueError) as exc:
            raise VideoError(self.path, f"not a readable video ({decoder_message(exc)})") from None
        if not self.container.streams.video:
            self.container.close()
            raise VideoError(self.path, "no video stream (audio-only or not a video)")
        self.stream = self.container.streams.video[0]
        self.stream.codec_context.thread_count = 1

    def __enter__(self) -> VideoFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.container.close()

    # ---- time -------------------------------------------------------------------------------------------------
    def _demux(self) -> _Packets:
        packets = _Packets([], [], 0, True)
        best = None
        try:
            for packet in self.container.demux(self.stream):
                if packet.size == 0:  # the flush packet, or a frame an AVI holds (shown until the next one)
                    packets.held += packet.dts is not None
                    continue
                pts = packet.pts if packet.pts is not None else packet.dts
                if pts is None:
                    packets.complete = False
                    pts = len(packets.pts)
                packets.pts.append(pts)
                packets.keys.append(int(packet.is_keyframe))
                if best is None or pts >= best:
                    best, packets.last_duration = pts, packet.duration or 0
        except av.FFmpegError as exc:
            raise VideoError(self.path, f"corrupt or truncated video ({decoder_message(exc)})") from None
        claimed = self.stream.frames  # MP4/MOV: the sample index's count, which a cut-off file no longer holds
        if "mov" in self.container.format.name and len(packets.pts) + packets.held < claimed:
            raise VideoError(self.path, f"corrupt or truncated video (its index lists {claimed} frames, the file "
                                        f"holds {len(packets.pts) + packets.held})")
        return packets

    def _timeline(self) -> Timeline:
        packets = self._demux()
        if not packets.pts:
            raise VideoError(self.path, "no video frames")
        rate = self.stream.average_rate or self.stream.guessed_rate or self.stream.base_rate
        fps = float(rate) if rate else 0.0
        order = np.argsort(np.asarray(packets.pts, np.int64), kind="stable")
        pts = np.asarray(packets.pts, np.int64)[order]
        keys = np.flatnonzero(np.asarray(packets.keys, np.int64)[order])
        keys = np.union1d([0], keys).astype(np.int64)
        if packets.complete and self.stream.time_base is not None:
            base = float(self.stream.time_base)
            times = (pts - pts[0]) * base
            self._pts, self._pts_index = pts, {int(p): i for i, p in enumerate(pts.tolist())}
            step = packets.last_duration * base or (float(np.median(np.diff(times))) if len(times) > 1 else 0.0)
            step = step or (1.0 / fps if fps > 0 else 0.0)
            return Timeline(times, keys, float(times[-1] + step), fps, True)
        if not fps > 0:
            raise VideoError(self.path, "no timestamps and no frame rate: cannot place frames in time")
        times = np.arange(len(pts)) / fps
        return Timeline(times, keys, len(pts) / fps, fps, False)

    # ---- frames -----------------------------------------------------------------------------------------------
    def frames(self, wanted: np.ndarray, image_size: int, crop: bool = True) -> Iterator[tuple[int, np.ndarray]]:
        """(index, (S, S, 3) uint8) for each of `wanted` (ascending, unique frame indices), in order (`crop`
        False: the whole upright frame, shorter side S, (H, W, 3)). A wanted
        frame the decoder never outputs (damaged, or dropped by the codec) gets the next frame it does output;
        past the last decodable frame, the last one. Raises VideoError when nothing decodes."""
        try:
            yield from self._frames(np.asarray(wanted, np.int64), image_size, crop)
        except av.FFmpegError as exc:
            raise VideoError(self.path, f"corrupt or truncated video ({decoder_message(exc)})") from None

    def _frames(self, wanted: np.ndarray, image_size: int, crop: bool) -> Iterator[tuple[int, np.ndarray]]:
        done, position, last = 0, -1, None  # wanted frames delivered, last decoded index, its converted frame
        while done < len(wanted):
            key = self._key_of(wanted[done]) if self.timeline.from_stream else 0
            for index, frame in self._decode_from(key):
                position = index
                if wanted[done] > index:
                    continue
                last = self._convert(frame, image_size, crop)
                while done < len(wanted) and wanted[done] <= index:
                    yield int(wanted[done]), last
                    done += 1
                if done == len(wanted) or self._seek_pays(wanted[done], position, key):
                    break
            else:  # the end of the stream
                if last is None:
                    raise VideoError(self.path, "corrupt or truncated video (no frame could be decoded)")
                while done < len(wanted):
                    yield int(wanted[done]), last
                    done += 1

    def _key_of(self, frame: int) -> int:
        """The last key frame at or before `frame`."""
        keys = self.timeline.keys
        return int(keys[np.searchsorted(keys, frame, "right") - 1])

    def _seek_pays(self, frame: int, position: int, run_key: int) -> bool:
        """Whether a key frame after the current run's lies between the decoder's position and `frame`: a seek
        there skips the stretch in between. Never without timestamps to seek by."""
        key = self._key_of(frame)
        return self.timeline.from_stream and key > position + 1 and key > run_key

    def _decode_from(self, key: int) -> Iterator[tuple[int, av.VideoFrame]]:
        """Decoded frames with their indices (presentation order), after a seek to key frame `key`."""
        if self.timeline.from_stream:
            self.container.seek(int(self._pts[key]), stream=self.stream, backward=True, any_frame=False)
            self.stream.codec_context.flush_buffers()
        else:  # no timestamps to seek by (raw streams cannot seek at all): start again from the top
            self.container.close()
            self._open()
        position, errors = key - 1, 0
        for packet in self.container.demux(self.stream):
            try:
                decoded = packet.decode()
            except av.FFmpegError as exc:  # a damaged packet: skip it, as players do, unless nothing decodes
                errors += 1
                if errors > 64:
                    raise VideoError(self.path, f"corrupt or truncated video ({decoder_message(exc)})") from None
                continue
            for frame in decoded:
                position = self._pts_index.get(frame.pts, position + 1) if frame.pts is not None else position + 1
                yield position, frame

    def _convert(self, frame: av.VideoFrame, size: int, crop: bool = True) -> np.ndarray:
        return to_rgb(frame, size, float(self.stream.sample_aspect_ratio or 1), crop)


def to_rgb(frame: av.VideoFrame, size: int, sar: float = 1.0, crop: bool = True) -> np.ndarray:
    """One decoded frame upright, shorter side (as shown: `sar` = pixel width / height as stored) resized to
    `size`, centre-cropped: (S, S, 3) uint8 (`crop` False: not cropped, (H', W', 3)). 8-bit 4:2:0 frames are
    resized by swscale in YUV, then converted; other formats are converted at full size, then resized by Pillow
    (module docstring)."""
    turns = round(frame.rotation / 90) % 4  # counter-clockwise quarter turns a player applies
    width, height = frame.width, frame.height  # as stored
    shown = (height, width * sar) if turns % 2 else (width * sar, height)  # (width, height) upright
    if frame.format.name not in YUV420_FORMATS:
        rgb = frame.to_ndarray(format="rgb24", threads=1)  # (H, W, 3) as stored
        return resize_center_crop(np.rot90(rgb, turns) if turns else rgb, size, shown, crop)
    new_w, new_h = resized_size(size, shown)  # upright
    stored_w, stored_h = (new_h, new_w) if turns % 2 else (new_w, new_h)
    if (stored_w, stored_h) != (width, height):
        frame = frame.reformat(width=stored_w, height=stored_h, interpolation="BICUBIC", threads=1)
    rgb = frame.to_ndarray(format="rgb24", threads=1)  # (h, w, 3) as stored, resized
    rgb = np.rot90(rgb, turns) if turns else rgb
    return center_crop(rgb, size) if crop else np.ascontiguousarray(rgb)


def resized_size(size: int, shown: tuple[float, float]) -> tuple[int, int]:
    """(width, height) of a frame shown as `shown` (width, height) once its shorter side is `size`, the longer
    one int(S * long / short) (torchvision's sizes)."""
    shown_w, shown_h = shown
    short, long = sorted((shown_w, shown_h))
    long_px = int(size * long / short)
    return (long_px, size) if shown_h <= shown_w else (size, long_px)


def _crop_offsets(new_w: int, new_h: int, size: int) -> tuple[int, int]:
    """(top, left) of the S x S centre crop of a new_w x new_h frame (torchvision's rounding)."""
    return int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))


def center_crop(rgb: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) -> (S, S, 3) contiguous, the centre crop with torchvision's offsets."""
    top, left = _crop_offsets(rgb.shape[1], rgb.shape[0], size)
    return np.ascontiguousarray(rgb[top:top + size, left:left + size])


def resize_center_crop(rgb: np.ndarray, size: int, shown: tuple[float, float] | None = None,
                       crop: bool = True) -> np.ndarray:
    """(H, W, 3) uint8 -> (S, S, 3) uint8: the shorter side of the frame as shown (`shown` = (width, height), the
    pixel size by default) to S with Pillow's bicubic (antialiased), then the centre crop with torchvision's sizes
    (`crop` False: the whole frame, (H', W', 3)). Pillow resamples only the source box the crop keeps (the same
    filter centres and support as a full resize followed by the crop)."""
    height, width = rgb.shape[:2]
    new_w, new_h = resized_size(size, shown or (width, height))
    image = Image.fromarray(np.ascontiguousarray(rgb))
    if not crop:
        return np.asarray(image.resize((new_w, new_h), Image.Resampling.BICUBIC))
    top, left = _crop_offsets(new_w, new_h, size)
    sy, sx = height / new_h, width / new_w  # source pixels per resized pixel
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC, box=box))


__all__ = ["VideoError", "VideoFile", "Timeline", "check_file", "decoder_message", "resize_center_crop", "resized_size",
           "center_crop", "to_rgb"]
