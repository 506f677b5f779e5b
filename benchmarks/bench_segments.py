"""Segmented embedding (`dgl embed --window/--stride`) of long videos, three parts:

1. `runs` - decoding every window of a long video: one forward pass over the union of the windows' frames (what
   `dgl embed --window` does, `data.window_decode.decode_windows`) vs. a seek and a decode per window (the
   decoder's `VideoFile.frames` called once per window: each call seeks to its window's key frame) vs. decoding
   every frame of the file in order with PyAV on one thread, converting only the needed ones (the floor of
   bench_decode.py); each strategy in a fresh subprocess (its peak RSS is its own): seconds (wall and CPU),
   frames converted (every_frame: frames decoded), windows per second, peak RSS. `real`: the same three, in
   process and interleaved (medians of wall and CPU time), on the shared real clip bikes.mp4 (10 s, 640x272;
   `--real-window` / `--real-stride`, default 4 / 2 s; skipped when the shared folder is absent).
2. `pipeline` (`--pipeline`) - windows/s of `retrieval.embed.embed_videos` with `EmbedSettings(segments=...)` (the
   CLI's `dgl embed --window W --stride S`) on the one long clip vs. the encoder alone (`encode_videos`, same
   batch) on the same window stacks decoded beforehand, interleaved (`common.interleaved`, `--pipeline-repeats`
   rounds, medians). Model: the random-init ViT-B/32 DGL export (`common.exported_model`, cached in --workdir),
   `open_encoder(precision="auto")`, the library default.
3. `rss` (`--rss-minutes M ...`) - peak resident memory of a whole `embed_videos` job on a long
   `--rss-size` clip, one fresh subprocess per length: the job's process (VmHWM) and every decoder process it
   started (the window decoder runs in a forkserver child: its VmHWM sampled from /proc every 50 ms).

Clips: synthetic (`data.long_clips`: shots of 10 s, h264, a key frame every `--gop` frames), written once into
`--dir` and reused (same arguments, same bytes). Prints one JSON line (benchmarks/results/segments.json keeps the
last one).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decode import floor_pass, shared_dir, with_cpu_time  # noqa: E402
from common import emit, interleaved  # noqa: E402

from dgl_deploy.data.decoder import VideoFile  # noqa: E402
from dgl_deploy.data.long_clips import cycle_shots, write_shots  # noqa: E402
from dgl_deploy.data.window_decode import decode_windows, plan_windows  # noqa: E402
from dgl_deploy.data.windows import Segmentation  # noqa: E402


def _windows(video: VideoFile, segmentation: Segmentation, frames: int) -> list[np.ndarray]:
    """Each window's frame indices on the file's timeline (what decode_windows plans)."""
    return plan_windows(video.timeline, segmentation, frames)[1]


def forward(path: Path, segmentation: Segmentation, frames: int, size: int) -> tuple[int, int]:
    """The library's strategy; returns (windows, frames converted)."""
    windows = sum(len(stacks.spans) for stacks in decode_windows(path, segmentation, frames, size))
    with VideoFile(path) as video:
        indices = _windows(video, segmentation, frames)
    return windows, len(np.unique(np.concatenate(indices)))  # each needed frame once


def seek_per_window(path: Path, segmentation: Segmentation, frames: int, size: int) -> tuple[int, int]:
    """One `VideoFile.frames` call per window: a seek to the window's key frame, then forward to its last frame."""
    with VideoFile(path) as video:
        indices = _windows(video, segmentation, frames)
        for window in indices:
            dict(video.frames(np.unique(window), size))
    return len(indices), sum(len(np.unique(w)) for w in indices)


def every_frame(path: Path, segmentation: Segmentation, frames: int, size: int) -> tuple[int, int]:
    """Decode every frame in order on one thread, converting only the needed ones (bench_decode's floor, plus
    the timeline's demux pass that plans the windows)."""
    with VideoFile(path) as video:
        indices, total = _windows(video, segmentation, frames), len(video.timeline)
    floor_pass(path, np.unique(np.concatenate(indices)), size)
    return len(indices), total


STRATEGIES = {"forward": forward, "seek_per_window": seek_per_window, "every_frame": every_frame}


def run_one(args: argparse.Namespace) -> None:
    """Child process: time one strategy, print its JSON."""
    segmentation = Segmentation(args.window, args.stride)
    started, cpu_started = time.perf_counter(), time.process_time()
    windows, fetched = STRATEGIES[args.strategy](args.clip, segmentation, args.frames, args.size)
    seconds = time.perf_counter() - started
    print(json.dumps({"strategy": args.strategy, "seconds": round(seconds, 2),
                      "cpu_seconds": round(time.process_time() - cpu_started, 2), "windows": windows,
                      "frames_fetched": fetched, "windows_per_s": round(windows / seconds, 1),
                      "peak_rss_mb": _peak_rss_mb()}))


def run_real(args: argparse.Namespace) -> dict | None:
    """The three strategies in process, interleaved, on the shared real clip bikes.mp4."""
    clip = shared_dir() / "real_videos" / "bikes.mp4"
    if not clip.exists():
        return None
    segmentation = Segmentation(args.real_window, args.real_stride)
    counts: dict[str, tuple[int, int]] = {}
    calls = {name: (lambda n=name: counts.__setitem__(n, STRATEGIES[n](clip, segmentation, args.frames, args.size)))
             for name in STRATEGIES}
    calls, cpu = with_cpu_time(calls)
    times = interleaved(calls, args.real_repeats, warmup=1)
    return {"clip": "bikes.mp4 (shared real_videos: 10 s 640x272 25 fps h264)", "window": args.real_window,
            "stride": args.real_stride, "windows": counts["forward"][0], "repeats": args.real_repeats,
            "median_ms": {name: round(1000 * statistics.median(seconds), 1) for name, seconds in times.items()},
            "cpu_median_ms": {name: round(1000 * statistics.median(seconds[1:]), 1) for name, seconds in cpu.items()},
            "windows_per_s": {name: round(counts[name][0] / statistics.median(seconds), 1)
                              for name, seconds in times.items()}}


def _peak_rss_mb() -> int:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024)
    return -1


def _vm_hwm_mb(pid: int | str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024)
    except OSError:
        pass
    return -1


def _descendants(root: int) -> dict[int, str]:
    """pid -> role of every live descendant of `root`: forkserver / resource_tracker (its children), decoder (a
    forkserver's child), else the command name."""
    parents: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            name = next((k for k in ("forkserver", "resource_tracker") if k in cmdline),
                        stat[stat.index("(") + 1:stat.rindex(")")])
            parents[int(entry.name)] = (int(stat[stat.rindex(")") + 2:].split()[1]), name)
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        for child, (parent, name) in parents.items():
            if parent == pid and child not in found:
                found[child] = "decoder" if found.get(pid) == "forkserver" else name
                frontier.append(child)
    return found


class _ChildPeaks:
    """Samples the VmHWM of every descendant process every `interval` s (a killed decoder's peak is its last
    sample)."""

    def __init__(self, interval: float = 0.05) -> None:
        self.peaks: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            for pid, name in _descendants(os.getpid()).items():
                peak = _vm_hwm_mb(pid)
                if peak > self.peaks.get(pid, ("", -1))[1]:
                    self.peaks[pid] = (name, peak)

    def stop(self) -> dict[int, tuple[str, int]]:
        self._stop.set()
        self._thread.join()
        return self.peaks


def _open_encoder(workdir: Path):  # noqa: ANN202
    from common import exported_model, warm_up

    from dgl_deploy.runtime.backends.select import open_encoder

    encoder = open_encoder(exported_model(workdir), precision="auto", log=None)
    warm_up(encoder)
    return encoder


def run_pipeline(args: argparse.Namespace) -> dict:
    """embed_videos with segments on the one long clip vs encode_videos on the same stacks decoded beforehand."""
    from dgl_deploy.retrieval.embed import EmbedSettings, embed_videos

    segmentation = Segmentation(args.window, args.stride)
    encoder = _open_encoder(args.workdir)
    stacks = np.concatenate([g.frames for g in decode_windows(args.clip, segmentation, encoder.frames,
                                                              encoder.image_size)])  # not timed
    results = []

    def alone() -> None:
        for i in range(0, len(stacks), args.batch):
            encoder.encode_videos(stacks[i:i + args.batch])

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "videos"
        folder.mkdir()
        (folder / args.clip.name).symlink_to(args.clip.resolve())
        settings = EmbedSettings(batch_size=args.batch, workers=args.workers, segments=segmentation)
        times = interleaved({"encoder_only": alone, "pipeline": lambda: results.append(
            embed_videos(folder, Path(tmp) / "emb.npy", encoder, settings, overwrite=True))}, args.pipeline_repeats,
            warmup=0)
    assert all(not r.failures and r.new_rows == len(stacks) for r in results), [(r.failures, r.new_rows) for r in results]
    rates = {name: len(stacks) / statistics.median(seconds) for name, seconds in times.items()}
    return {"model": f"ViT-B-32 DGL random init, {encoder.describe()}", "precision": results[0].precision,
            "batch": args.batch, "workers": args.workers, "windows": len(stacks), "repeats": args.pipeline_repeats,
            "encoder_only_windows_per_s": round(rates["encoder_only"], 3),
            "pipeline_windows_per_s": round(rates["pipeline"], 3),
            "efficiency_percent": round(100 * rates["pipeline"] / rates["encoder_only"], 1), "target_percent": 90,
            "seconds": {name: [round(t, 1) for t in seconds] for name, seconds in times.items()},
            "decode_wait_s": [round(r.decode_wait_seconds, 1) for r in results]}


def run_rss(args: argparse.Namespace) -> None:
    """Child process: one embed_videos job with segments on `args.clip`; its peak RSS and its decoders'."""
    from dgl_deploy.retrieval.embed import EmbedSettings, embed_videos

    encoder = _open_encoder(args.workdir)
    before = _vm_hwm_mb("self")
    sampler = _ChildPeaks()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "videos"
        folder.mkdir()
        (folder / args.clip.name).symlink_to(args.clip.resolve())
        settings = EmbedSettings(batch_size=args.batch, workers=args.workers,
                                 segments=Segmentation(args.window, args.stride))
        result = embed_videos(folder, Path(tmp) / "emb.npy", encoder, settings, overwrite=True)
    peaks = sampler.stop()
    assert not result.failures, result.failures
    decoders = [peak for name, peak in peaks.values() if name == "decoder"]
    others = {}
    for name, peak in peaks.values():
        if name != "decoder":
            others[name] = max(peak, others.get(name, -1))
    print(json.dumps({"windows": result.new_rows, "seconds": round(result.seconds, 1),
                      "job_process_peak_rss_mb": _vm_hwm_mb("self"), "job_process_rss_before_job_mb": before,
                      "decoder_processes": len(decoders), "decoder_peak_rss_mb": max(decoders, default=-1),
                      "other_children_peak_rss_mb": others}))


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
    parser.add_argument("--strategies", nargs="*", default=list(STRATEGIES), choices=list(STRATEGIES),
                        help="Decode strategies to time (none: skip part 1).")
    parser.add_argument("--real-window", type=float, default=4.0, help="Windows of the real-clip row (s).")
    parser.add_argument("--real-stride", type=float, default=2.0)
    parser.add_argument("--real-repeats", type=int, default=5, help="Interleaved rounds of the real-clip row (0: skip).")
    parser.add_argument("--pipeline", action="store_true", help="Part 2: embed_videos vs encoder alone, windows/s.")
    parser.add_argument("--pipeline-repeats", type=int, default=3, help="Part 2: interleaved rounds.")
    parser.add_argument("--batch", type=int, default=16, help="Windows per encoder call (dgl embed's default).")
    parser.add_argument("--workers", type=int, default=2, help="Decoder processes (dgl embed's default).")
    parser.add_argument("--rss-minutes", type=float, nargs="*", default=[], help="Part 3: clip lengths (minutes).")
    parser.add_argument("--rss-size", default="1920x1080", help="Part 3: clip WIDTHxHEIGHT.")
    parser.add_argument("--rss-fps", type=int, default=5)
    parser.add_argument("--rss-gop", type=int, default=50)
    parser.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / ".work",
                        help="Where the ViT-B/32 export is cached (common.exported_model).")
    parser.add_argument("--dir", type=Path, help="Keep the clips here and reuse them (default: a temp dir).")
    parser.add_argument("--strategy", choices=list(STRATEGIES), help=argparse.SUPPRESS)  # child process
    parser.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)  # child process
    parser.add_argument("--clip", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.strategy:
        run_one(args)
        return
    if args.rss_child:
        run_rss(args)
        return
    out: dict = {"load_average_1m_at_start": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory() as tmp:
        where = args.dir or Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        clip = where / f"long_{args.minutes:g}min_{args.height}p_{args.fps}fps_g{args.gop}.mp4"
        started = time.perf_counter()
        if not clip.exists() and (args.strategies or args.pipeline):
            write_shots(clip, cycle_shots(args.minutes * 60, 10.0), (args.height, args.width), args.fps, args.gop)
        out.update({"clip": f"{args.minutes:g} min {args.width}x{args.height} {args.fps} fps h264 gop {args.gop}",
                    "window": args.window, "stride": args.stride, "frames": args.frames, "size": args.size,
                    "generate_s": round(time.perf_counter() - started, 1)})
        common = [f"--{k}={getattr(args, k)}" for k in ("window", "stride", "frames", "size")]
        if args.strategies:
            out["runs"] = [json.loads(subprocess.run(
                [sys.executable, __file__, "--strategy", name, "--clip", str(clip), *common],
                check=True, capture_output=True, text=True).stdout) for name in args.strategies]
        if args.real_repeats:
            out["real"] = run_real(args)
        if args.pipeline:
            args.clip = clip
            out["pipeline"] = run_pipeline(args)
        if args.rss_minutes:
            width, height = (int(v) for v in args.rss_size.lower().split("x"))
            out["rss"] = {"clip": f"{width}x{height} {args.rss_fps} fps h264 gop {args.rss_gop}", "batch": args.batch,
                          "workers": args.workers}
            for minutes in args.rss_minutes:
                long_clip = where / f"long_{minutes:g}min_{height}p_{args.rss_fps}fps_g{args.rss_gop}.mp4"
                if not long_clip.exists():
                    write_shots(long_clip, cycle_shots(minutes * 60, 10.0), (height, width), args.rss_fps,
                                args.rss_gop)
                child = subprocess.run([sys.executable, __file__, "--rss-child", "--clip", str(long_clip), *common,
                                        f"--batch={args.batch}", f"--workers={args.workers}",
                                        f"--workdir={args.workdir}"], check=True, capture_output=True, text=True)
                out["rss"][f"{minutes:g}min"] = json.loads(child.stdout.strip().splitlines()[-1])
    emit("segments", out)


if __name__ == "__main__":
    main()
