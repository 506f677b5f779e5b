"""Decoding every window of a long video: one forward pass over the union of the windows' frames (what
`dgl embed --window` does, `data.window_decode.decode_windows`) vs. a seek and a decode per window, vs. decoding
every frame of the file in order.

Writes a `--minutes` synthetic clip (shots of 10 s, h264, key frame every `--gop` frames) once into `--dir`,
then times each strategy in a fresh subprocess (its peak RSS is its own): seconds, frames fetched from the
decoder, windows per second, peak RSS. Prints one JSON line (benchmarks/results/segments.json keeps the last one).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import decord
import numpy as np

from dgl_deploy.data.long_clips import cycle_shots, write_shots
from dgl_deploy.data.video import frame_indices, resize_center_crop
from dgl_deploy.data.window_decode import decode_windows
from dgl_deploy.data.windows import Segmentation, windows_of


def _windows(path: Path, segmentation: Segmentation, frames: int) -> tuple[decord.VideoReader, list[np.ndarray]]:
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    count, fps = len(reader), reader.get_avg_fps()
    return reader, [frame_indices(count, fps, frames, span) for span in windows_of(count / fps, segmentation)]


def forward(path: Path, segmentation: Segmentation, frames: int, size: int) -> tuple[int, int]:
    """The library's strategy; returns (windows, frames fetched)."""
    windows = sum(len(stacks.spans) for stacks in decode_windows(path, segmentation, frames, size))
    _, indices = _windows(path, segmentation, frames)
    return windows, len(np.unique(np.concatenate(indices)))  # each needed frame once


def seek_per_window(path: Path, segmentation: Segmentation, frames: int, size: int) -> tuple[int, int]:
    """One get_batch (a seek to the window's first frame, then forward) per window."""
    reader, indices = _windows(path, segmentation, frames)
    for window in indices:
        resize_center_crop(reader.get_batch(list(window)).asnumpy(), size)
    return len(indices), sum(len(w) for w in indices)


def every_frame(path: Path, segmentation: Segmentation, frames: int, size: int) -> tuple[int, int]:
    """Decode every frame in order (skipping the colour conversion of unneeded ones), keep the needed ones."""
    reader, indices = _windows(path, segmentation, frames)
    needed = np.unique(np.concatenate(indices))
    reader.seek(0)
    position = 0
    for index in needed:
        if index > position:
            reader.skip_frames(int(index) - position)
        resize_center_crop(reader.next().asnumpy()[None], size)
        position = int(index) + 1
    return len(indices), len(reader)


STRATEGIES = {"forward": forward, "seek_per_window": seek_per_window, "every_frame": every_frame}


def run_one(args: argparse.Namespace) -> None:
    """Child process: time one strategy, print its JSON."""
    segmentation = Segmentation(args.window, args.stride)
    started = time.perf_counter()
    windows, fetched = STRATEGIES[args.strategy](args.clip, segmentation, args.frames, args.size)
    seconds = time.perf_counter() - started
    print(json.dumps({"strategy": args.strategy, "seconds": round(seconds, 2), "windows": windows,
                      "frames_fetched": fetched, "windows_per_s": round(windows / seconds, 1),
                      "peak_rss_mb": _peak_rss_mb()}))


def _peak_rss_mb() -> int:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--gop", type=int, default=250)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--stride", type=float, default=5.0)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument("--dir", type=Path, help="Keep the clip here and reuse it (default: a temp dir).")
    parser.add_argument("--strategy", choices=list(STRATEGIES), help=argparse.SUPPRESS)  # child process
    parser.add_argument("--clip", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.strategy:
        run_one(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        clip = (args.dir or Path(tmp)) / f"long_{args.minutes:g}min_{args.height}p_{args.fps}fps_g{args.gop}.mp4"
        started = time.perf_counter()
        if not clip.exists():
            write_shots(clip, cycle_shots(args.minutes * 60, 10.0), (args.height, args.width), args.fps, args.gop)
        generate_s = time.perf_counter() - started
        common = [f"--{k}={getattr(args, k)}" for k in ("window", "stride", "frames", "size")]
        runs = [json.loads(subprocess.run([sys.executable, __file__, "--strategy", name, "--clip", str(clip), *common],
                                          check=True, capture_output=True, text=True).stdout)
                for name in args.strategies]
    print(json.dumps({"clip": f"{args.minutes:g} min {args.width}x{args.height} {args.fps} fps h264 gop {args.gop}",
                      "window": args.window, "stride": args.stride, "frames": args.frames, "size": args.size,
                      "generate_s": round(generate_s, 1), "runs": runs}))


if __name__ == "__main__":
    main()
