"""encode_video of DGL vs a plain open_clip image forward of the same frames (issue 2's benchmark).

ViT-B/32 (random init: timing does not depend on the weights), 12 frames, batch 4, fp32 on CPU:
DGL's global-local attention adds 4 prompt tokens per frame (54 instead of 50) plus 4 global tokens.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, timeit  # noqa: E402

from dgl_deploy.model.model import create_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    model = create_model(args.model, pretrained=None, frames=args.frames).eval()
    size = model.image_size
    videos = torch.randn(args.batch, args.frames, 3, size, size)
    with torch.inference_mode():
        prompts = model.prompts()
        plain = timeit(lambda: model.clip.encode_image(videos.flatten(0, 1)), args.repeats)
        dgl = timeit(lambda: model.encode_video(videos, prompts), args.repeats)
    overhead = dgl["median_s"] / plain["median_s"] - 1
    emit("model_encode_video", {
        "model": args.model, "batch": args.batch, "frames": args.frames,
        "plain_clip_frames_s": round(plain["median_s"], 4), "dgl_encode_video_s": round(dgl["median_s"], 4),
        "dgl_videos_per_s": round(args.batch / dgl["median_s"], 2),
        "dgl_overhead_percent": round(100 * overhead, 1), "target_overhead_percent": 15,
    })


if __name__ == "__main__":
    main()
