"""Decoding (PyAV, `data.decoder`): throughput, window decoding against its floor, memory, real footage, pixels.

Parts (`--parts`, default all; each adds its key to the one JSON line printed):

1. `runs` (throughput) - videos/s for T-frame sampling at S² of `--videos` synthetic 480p clips (10 s, 854x480,
   30 fps, h264, `data.synthetic`) through `iter_video_batches` (batch 1) per worker count, subprocess-isolated
   and in-thread (`isolate=False`, the cost of crash isolation). `videos_per_s` is the steady rate between the
   first and last video; `first_s` the time to the first video (worker start-up included).
2. `long` - window decoding against the single-pass floor on a long 720p file with 250-frame GOPs (`--long-
   minutes`, default 3; 1280x720, 25 fps, libx264 g=250 keyint_min=250 sc_threshold=0, a panned texture plus
   noise so it is not trivially compressible; cached in --workdir). `ours`: `decode_windows(path,
   Segmentation(4, 2), 12, 224)` fully consumed, in this process, one thread (the timeline's demux pass
   included). `floor`: one sequential PyAV decode of the file on one thread (`thread_count = 1`) that converts
   (with the decoder's own conversion, `decoder.to_rgb`) only the frames the windows take
   (`plan_windows` on the file's timeline, computed beforehand, not timed), stopping after the last one.
   Interleaved rounds (`common.interleaved`), medians of wall and of CPU seconds (`time.process_time`: the host is
   shared, and CPU time moves less with other load); `floor_over_ours` = floor time / ours (target >= 0.8).
   `timeline` (the demux pass alone) is timed in the same rounds, to show what ours adds.
3. `rss` - peak RSS (VmHWM) of a fresh subprocess that runs `decode_windows` (window 4 s, stride 2 s) over a
   2- and a 12-minute 640x360 10 fps file (GOP 250, same content generator), and over the 720p file of part 2:
   the process's peak, its resident size before decoding (imports done), and its resident size after each eighth
   of the windows (`rss_trace_mb`).
4. `real` - the shared real clips (`$DGL_SHARED_DIR/real_videos`, else ../shared, as tests/conftest.py finds
   them): `decode_frames` (whole video, 12 frames, 224) and `decode_windows` (window 4 stride 2), and the old
   path (decord + Pillow) on the same frames, interleaved, median wall and CPU ms.
5. `pixels` - the new path's frames against the old path's (decord `VideoReader(path, num_threads=1)`
   `get_batch(indices)`, then per frame Pillow's bicubic resize of the torchvision-style shorter-side resize +
   centre crop region, `box=`), same frame indices (the new timeline's uniform ones: on these constant-rate clips
   the old ones): mean and p99 absolute difference (0-255), and the cosine of the two paths' video embeddings
   with a random-init (seeded) ViT-B/32 DGL model in PyTorch fp32 (`create_model`, `pixels.normalize`,
   `encode_video`; bound: >= 0.999), plus diagnostics that split the difference (`pixels`' docstring). decord is
   the [bench] extra's; only parts 4-5 import it.

Prints one JSON line (benchmarks/results/decode.json keeps the last one).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import cpu_model, emit, interleaved, load_average  # noqa: E402

from dgl_deploy.data.decoder import VideoFile, to_rgb  # noqa: E402
from dgl_deploy.data.frame_request import FrameRequest  # noqa: E402
from dgl_deploy.data.loader import iter_video_batches  # noqa: E402
from dgl_deploy.data.sampling import uniform_indices  # noqa: E402
from dgl_deploy.data.synthetic import make_synthetic  # noqa: E402
from dgl_deploy.data.video import decode_frames  # noqa: E402
from dgl_deploy.data.window_decode import decode_windows, plan_windows  # noqa: E402
from dgl_deploy.data.windows import Segmentation  # noqa: E402

HERE = Path(__file__).resolve().parent
PARTS = ("throughput", "long", "rss", "real", "pixels")
REAL_CLIPS = ("bikes.mp4", "carphone_pristine.mp4")


# ---- clips ----------------------------------------------------------------------------------------------------
def _texture_frames(count: int, width: int, height: int, seed: int = 0) -> Iterator[np.ndarray]:
    """A smoothed random texture panned 2 px down and 3 px right per frame, plus one of 8 noise fields:
    motion and grain everywhere, so the encoder cannot skip blocks."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 240, (height // 8 + 40, width // 8 + 40, 3), np.uint8)
    texture = np.repeat(np.repeat(cells, 8, 0), 8, 1).astype(np.uint16)
    texture = ((texture + np.roll(texture, 4, 0) + np.roll(texture, 4, 1) + np.roll(texture, 4, (0, 1))) // 4)
    texture = texture.astype(np.uint8)
    noise = rng.integers(0, 12, (8, height, width, 3), np.uint8)
    span_y, span_x = texture.shape[0] - height, texture.shape[1] - width
    for i in range(count):
        y, x = (2 * i) % span_y, (3 * i) % span_x
        yield texture[y:y + height, x:x + width] + noise[i % 8]  # values stay below 252: no wrap


def long_clip(folder: Path, minutes: float, width: int, height: int, fps: int, gop: int = 250) -> Path:
    """The cached H.264 file (libx264 veryfast crf 23, a key frame exactly every `gop` frames)."""
    path = folder / f"texture_{minutes:g}min_{width}x{height}_{fps}fps_g{gop}.mp4"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.mp4")
    with av.open(str(partial), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "preset": "veryfast",
                          "crf": "23"}
        for frame in _texture_frames(round(minutes * 60 * fps), width, height):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        container.mux(stream.encode())
    partial.rename(path)
    return path


def shared_dir() -> Path:
    """$DGL_SHARED_DIR, else ../shared beside the checkout, else /work/shared (tests/conftest.py's rule)."""
    candidates = [os.environ.get("DGL_SHARED_DIR"), HERE.parents[1] / "shared", "/work/shared"]
    found = [Path(c) for c in candidates if c and Path(c).is_dir()]
    return found[0] if found else HERE.parents[1] / "shared"


def describe(path: Path) -> dict:
    with VideoFile(path) as video:
        stream = video.stream
        return {"codec": stream.codec_context.name, "size": f"{stream.width}x{stream.height}",
                "frames": len(video.timeline), "seconds": round(video.timeline.duration, 3),
                "fps": round(video.timeline.fps, 3), "key_frames": len(video.timeline.keys),
                "mb": round(path.stat().st_size / 1e6, 1)}


# ---- 1. throughput --------------------------------------------------------------------------------------------
def measure(paths: list[Path], frames: int, size: int, workers: int, isolate: bool) -> dict[str, float]:
    """Time every yielded video; the steady rate excludes start-up (the first video)."""
    start = time.perf_counter()
    stamps = [time.perf_counter() for batch in iter_video_batches(paths, frames, size, 1, workers, isolate=isolate) if batch.indices]
    if len(stamps) != len(paths):
        raise RuntimeError(f"only {len(stamps)} of {len(paths)} videos decoded")
    steady = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    return {"workers": workers, "isolate": isolate, "videos_per_s": round(steady, 2), "first_s": round(stamps[0] - start, 3)}


def throughput(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = args.dir or Path(tmp)
        t0 = time.perf_counter()
        if len(list(root.glob("vid_*.mp4"))) != args.videos:
            make_synthetic(root, args.videos, seed=0, size=(480, 854), seconds=args.seconds, fps=args.fps)
        generate_s = time.perf_counter() - t0
        paths = sorted(root.glob("vid_*.mp4"))
        runs = [measure(paths, args.frames, args.size, w, isolate) for isolate in (True, False) for w in args.workers]
    return {"clip": f"{args.seconds:g}s 854x480 {args.fps}fps h264", "videos": args.videos, "generate_s": round(generate_s, 1),
            "runs": runs}


def with_cpu_time(fns: dict[str, Callable[[], object]]) -> tuple[dict[str, Callable[[], None]], dict[str, list[float]]]:
    """`fns` wrapped to also record this process's CPU seconds per call (`time.process_time`: on a shared host
    less sensitive to other load than wall time; the decoding here runs on one thread)."""
    cpu: dict[str, list[float]] = {name: [] for name in fns}

    def wrap(name: str, fn: Callable[[], object]) -> Callable[[], None]:
        def call() -> None:
            started = time.process_time()
            fn()
            cpu[name].append(time.process_time() - started)
        return call

    return {name: wrap(name, fn) for name, fn in fns.items()}, cpu


# ---- 2. windows against the single-pass floor -----------------------------------------------------------------
def crop_geometry(width: float, height: float, size: int) -> tuple[int, int, int, int]:
    """torchvision's shorter-side resize + centre crop: (new_w, new_h, top, left)."""
    short, long = sorted((width, height))
    long_px = int(size * long / short)
    new_w, new_h = (long_px, size) if height <= width else (size, long_px)
    return new_w, new_h, int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))


def floor_pass(path: Path, wanted: np.ndarray, size: int) -> int:
    """One sequential decode on one thread, converting only `wanted` (ascending) frames; stops after the last."""
    kept = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        targets = iter(wanted.tolist())
        target = next(targets)
        for index, frame in enumerate(container.decode(stream)):
            if index < target:
                continue
            to_rgb(frame, size)
            kept += 1
            target = next(targets, None)
            if target is None:
                break
    return kept


def windows_pass(path: Path, segmentation: Segmentation, frames: int, size: int) -> int:
    return sum(len(group.frames) for group in decode_windows(path, segmentation, frames, size))


def timeline_pass(path: Path) -> int:
    with VideoFile(path) as video:
        return len(video.timeline)


def long_windows(args: argparse.Namespace) -> dict:
    started = time.perf_counter()
    path = long_clip(args.workdir, args.long_minutes, 1280, 720, 25)
    generate_s = time.perf_counter() - started
    segmentation = Segmentation(args.window, args.stride)
    with VideoFile(path) as video:
        _, indices = plan_windows(video.timeline, segmentation, args.frames)
    wanted = np.unique(np.concatenate(indices))
    path.read_bytes()  # into the page cache before the first round
    counts: dict[str, int] = {}
    calls = {"ours": lambda: counts.__setitem__("windows", windows_pass(path, segmentation, args.frames, args.size)),
             "floor": lambda: counts.__setitem__("floor_frames", floor_pass(path, wanted, args.size)),
             "timeline": lambda: counts.__setitem__("timeline_frames", timeline_pass(path))}
    calls, cpu = with_cpu_time(calls)
    times = interleaved(calls, args.long_repeats, warmup=0)
    assert counts["windows"] == len(indices) and counts["floor_frames"] == len(wanted), counts
    medians = {name: statistics.median(seconds) for name, seconds in times.items()}
    cpu_medians = {name: statistics.median(seconds) for name, seconds in cpu.items()}
    return {"clip": describe(path), "content": "panned texture + noise, libx264 veryfast crf 23, g=keyint_min=250, "
            "sc_threshold=0", "generate_s": round(generate_s, 1), "window": args.window, "stride": args.stride,
            "frames": args.frames, "size": args.size, "windows": len(indices), "frames_converted": len(wanted),
            "frames_in_file": counts["timeline_frames"], "repeats": args.long_repeats,
            "median_s": {name: round(value, 2) for name, value in medians.items()},
            "seconds": {name: [round(t, 2) for t in seconds] for name, seconds in times.items()},
            "cpu_median_s": {name: round(value, 2) for name, value in cpu_medians.items()},
            "cpu_seconds": {name: [round(t, 2) for t in seconds] for name, seconds in cpu.items()},
            "floor_over_ours": round(medians["floor"] / medians["ours"], 3), "target_floor_over_ours": 0.8,
            "floor_over_ours_cpu_time": round(cpu_medians["floor"] / cpu_medians["ours"], 3),
            "ours_frames_per_s": round(counts["timeline_frames"] / medians["ours"], 1)}


# ---- 3. memory ------------------------------------------------------------------------------------------------
def _vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return -1.0


def _vm_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return -1.0


def rss_child(args: argparse.Namespace) -> None:
    """Child process: decode_windows over `args.clip`, print its peak RSS (VmHWM), the RSS before, and the RSS
    after each eighth of the file's groups of windows (`rss_trace_mb`: flat, or growing with the position)."""
    before = _vm_rss_mb()
    started = time.perf_counter()
    windows, trace = 0, []
    for group in decode_windows(args.clip, Segmentation(args.window, args.stride), args.frames, args.size):
        windows += len(group.frames)
        if len(trace) < 8 * windows // group.total:
            trace.append(_vm_rss_mb())
    print(json.dumps({"windows": windows, "seconds": round(time.perf_counter() - started, 1),
                      "rss_before_decoding_mb": before, "peak_rss_mb": _vm_hwm_mb(), "rss_trace_mb": trace}))


def rss(args: argparse.Namespace) -> dict:
    clips = {f"{m:g}min_640x360_10fps": long_clip(args.workdir, m, 640, 360, 10) for m in args.rss_minutes}
    if "long" in args.parts:
        clips[f"{args.long_minutes:g}min_1280x720_25fps"] = long_clip(args.workdir, args.long_minutes, 1280, 720, 25)
    out: dict = {"window": args.window, "stride": args.stride, "frames": args.frames, "size": args.size}
    for name, path in clips.items():
        child = subprocess.run([sys.executable, __file__, "--rss-child", "--clip", str(path), f"--window={args.window}",
                                f"--stride={args.stride}", f"--frames={args.frames}", f"--size={args.size}"],
                               check=True, capture_output=True, text=True)
        out[name] = {**json.loads(child.stdout.strip().splitlines()[-1]), "clip": describe(path)}
    return out


# ---- 4-5. real footage, old path ------------------------------------------------------------------------------
def old_path(path: Path, indices: np.ndarray, size: int, display_aspect: bool = False,
             frames: np.ndarray | None = None) -> np.ndarray:
    """The decoder before PyAV: decord frames (or `frames`, full-size RGB), Pillow's bicubic resize of the crop
    region (`box`): (T, S, S, 3) uint8. `display_aspect`: the crop of the frame as shown (sample aspect ratio
    applied), which the old code ignored."""
    from PIL import Image

    if frames is None:
        import decord

        frames = decord.VideoReader(str(path), num_threads=1).get_batch(list(indices)).asnumpy()
    height, width = frames.shape[1:3]
    shown: float = width
    if display_aspect:  # the decoder's display width (not rounded)
        with av.open(str(path)) as container:
            shown = width * float(container.streams.video[0].sample_aspect_ratio or 1)
    new_w, new_h, top, left = crop_geometry(shown, height, size)
    sx, sy = width / new_w, height / new_h
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return np.stack([np.asarray(Image.fromarray(frame).resize((size, size), Image.Resampling.BICUBIC, box=box))
                     for frame in frames])


def swscale_frames(path: Path, indices: np.ndarray, size: int | None = None) -> np.ndarray:
    """PyAV frames `indices` converted by swscale to RGB at full size (bicubic chroma); with `size`, then resized
    RGB to RGB by swscale's bicubic and centre-cropped (two steps, not the decoder's one)."""
    wanted, out = set(indices.tolist()), {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        for index, frame in enumerate(container.decode(stream)):
            if index in wanted:
                rgb = frame.reformat(format="rgb24", interpolation="BICUBIC")
                if size:
                    new_w, new_h, top, left = crop_geometry(frame.width, frame.height, size)
                    rgb = rgb.reformat(width=new_w, height=new_h, format="rgb24", interpolation="BICUBIC", threads=1)
                    out[index] = rgb.to_ndarray()[top:top + size, left:left + size]
                else:
                    out[index] = rgb.to_ndarray()
            if index >= max(wanted):
                break
    return np.stack([out[int(i)] for i in indices])


def compare(a: np.ndarray, b: np.ndarray, model: object, normalize: object) -> dict:
    """Absolute and signed pixel differences of a - b (0-255), and the cosine of their video embeddings."""
    import torch

    signed = a.astype(np.int16) - b.astype(np.int16)
    diff = np.abs(signed)
    with torch.no_grad():
        embeddings = model.encode_video(normalize(np.stack([a, b])))
    return {"mean_abs_diff": round(float(diff.mean()), 3), "p99_abs_diff": float(np.percentile(diff, 99)),
            "max_abs_diff": int(diff.max()), "mean_signed_diff_rgb": [round(float(v), 3) for v in signed.mean((0, 1, 2))],
            "embedding_cosine": round(float((embeddings[0] * embeddings[1]).sum()), 6)}


def uniform_of(path: Path, frames: int) -> np.ndarray:
    with VideoFile(path) as video:
        return uniform_indices(video.timeline.times, frames)


class Skipped(Exception):
    """A part that cannot run here (its reason goes into the JSON instead of its numbers)."""


def real_clips() -> list[Path]:
    folder = shared_dir() / "real_videos"
    missing = [name for name in REAL_CLIPS if not (folder / name).exists()]
    if missing:
        raise Skipped(f"{folder}: {', '.join(missing)} not found (set DGL_SHARED_DIR)")
    try:
        import decord  # noqa: F401
    except ImportError:
        raise Skipped("decord not installed (the [bench] extra: pip install 'dgl-deploy[bench]')") from None
    return [folder / name for name in REAL_CLIPS]


def real(args: argparse.Namespace) -> dict:
    segmentation = Segmentation(args.window, args.stride)
    out: dict = {}
    for path in real_clips():
        indices = uniform_of(path, args.frames)
        counts: dict[str, int] = {}
        calls = {"whole": lambda p=path: decode_frames(FrameRequest(p, args.frames, args.size)),
                 "windows": lambda p=path, c=counts: c.__setitem__("windows", windows_pass(p, segmentation, args.frames,
                                                                                                args.size)),
                 "whole_old_decord_pillow": lambda p=path, i=indices: old_path(p, i, args.size)}
        calls, cpu = with_cpu_time(calls)
        times = interleaved(calls, args.real_repeats, warmup=1)
        out[path.stem] = {"clip": describe(path), "windows": counts["windows"], "repeats": args.real_repeats,
                          "median_ms": {name: round(1000 * statistics.median(s), 1) for name, s in times.items()},
                          "cpu_median_ms": {name: round(1000 * statistics.median(s[1:]), 1) for name, s in cpu.items()}}
    return {"frames": args.frames, "size": args.size, "window": args.window, "stride": args.stride, **out}


def pixels(args: argparse.Namespace) -> dict:
    """`vs_old`: the decoder (`decode_frames`) against the old code exactly. Diagnostics: `decoded_rgb_max_diff`
    (decord's RGB frames against swscale's at full size: the decoders' pixels before any resize),
    `vs_old_display_aspect` (where the clip's sample aspect ratio is not 1: the old path cropping the frame as
    shown, as the decoder does), `swscale_two_step_vs_old` (swscale converting to RGB first, then resizing RGB:
    what resizing in YUV, as the decoder does, adds)."""
    import decord
    import torch

    from dgl_deploy.model.model import create_model
    from dgl_deploy.model.pixels import normalize

    torch.manual_seed(0)
    model = create_model("ViT-B-32", pretrained=None).eval()
    frames = model.config.frames
    out: dict = {"model": f"ViT-B-32 DGL, random init (seed 0), PyTorch fp32, {frames} frames", "size": args.size,
                 "target_cosine": 0.999}
    for path in real_clips():
        indices = uniform_of(path, frames)
        new, old = decode_frames(FrameRequest(path, frames, args.size)), old_path(path, indices, args.size)
        raw = decord.VideoReader(str(path), num_threads=1).get_batch(list(indices)).asnumpy()
        with av.open(str(path)) as container:
            sar = container.streams.video[0].sample_aspect_ratio or Fraction(1)
        row = {"indices": indices.tolist(), "sample_aspect_ratio": str(sar),
               "vs_old": compare(new, old, model, normalize),
               "decoded_rgb_max_diff": int(np.abs(swscale_frames(path, indices).astype(np.int16) - raw).max())}
        if sar != 1:
            row["vs_old_display_aspect"] = compare(new, old_path(path, indices, args.size, display_aspect=True, frames=raw),
                                                   model, normalize)
        else:
            row["swscale_two_step_vs_old"] = compare(swscale_frames(path, indices, args.size), old, model, normalize)
        out[path.stem] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dir", type=Path, help="Keep the throughput clips here and reuse them (default: temp dir).")
    parser.add_argument("--workdir", type=Path, default=HERE / ".work" / "decode",
                        help="Where the long clips are cached (parts long, rss).")
    parser.add_argument("--window", type=float, default=4.0)
    parser.add_argument("--stride", type=float, default=2.0)
    parser.add_argument("--long-minutes", type=float, default=3.0)
    parser.add_argument("--long-repeats", type=int, default=3)
    parser.add_argument("--rss-minutes", type=float, nargs="*", default=[2.0, 12.0])
    parser.add_argument("--real-repeats", type=int, default=5)
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--clip", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args)
        return
    cpu = cpu_model()
    out: dict = {"load_average_1m_at_start": load_average(), "frames": args.frames, "size": args.size,
                 "host": f"{os.cpu_count()} cores, {cpu.get('cpu_model', '?')} ({', '.join(cpu.get('isa', []))}), "
                         f"load average at start and end recorded"}
    steps = {"throughput": throughput, "long": long_windows, "rss": rss, "real": real, "pixels": pixels}
    for part in PARTS:
        if part in args.parts:
            started = time.perf_counter()
            try:
                result = steps[part](args)
            except Skipped as exc:
                result = {"skipped": str(exc)}
            out.update(result if part == "throughput" else {part: result})
            print(f"{part}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    emit("decode", out)


if __name__ == "__main__":
    main()
