"""Decode throughput: videos/s for T-frame sampling at S² of synthetic 480p clips, per worker count.

Generates `--videos` clips (default 10 s, 854x480, 30 fps, h264) into a temp dir with
dgl_deploy.data.synthetic, then runs `iter_video_batches` (batch_size 1) for each worker count, in
subprocess-isolated mode and in-thread mode (`isolate=False`, the cost of crash isolation).
`videos_per_s` is the steady rate between the first and last video; `first_s` the time to the first
video (worker start-up included). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from dgl_deploy.data.loader import iter_video_batches
from dgl_deploy.data.synthetic import make_synthetic


def measure(paths: list[Path], frames: int, size: int, workers: int, isolate: bool) -> dict[str, float]:
    """Time every yielded video; the steady rate excludes start-up (the first video)."""
    start = time.perf_counter()
    stamps = [time.perf_counter() for batch in iter_video_batches(paths, frames, size, 1, workers, isolate=isolate) if batch.indices]
    if len(stamps) != len(paths):
        raise RuntimeError(f"only {len(stamps)} of {len(paths)} videos decoded")
    steady = (len(stamps) - 1) / (stamps[-1] - stamps[0])
    return {"workers": workers, "isolate": isolate, "videos_per_s": round(steady, 2), "first_s": round(stamps[0] - start, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dir", type=Path, help="Keep the clips here and reuse them on the next run (default: temp dir).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.dir or Path(tmp)
        t0 = time.perf_counter()
        if len(list(root.glob("vid_*.mp4"))) != args.videos:
            make_synthetic(root, args.videos, seed=0, size=(480, 854), seconds=args.seconds, fps=args.fps)
        generate_s = time.perf_counter() - t0
        paths = sorted(root.glob("vid_*.mp4"))
        runs = [measure(paths, args.frames, args.size, w, isolate) for isolate in (True, False) for w in args.workers]
    print(json.dumps({
        "clip": f"{args.seconds:g}s 854x480 {args.fps}fps h264", "videos": args.videos, "frames": args.frames,
        "size": args.size, "cpus": os.cpu_count(), "generate_s": round(generate_s, 1), "runs": runs,
    }))


if __name__ == "__main__":
    main()
