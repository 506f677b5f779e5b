"""Pipeline efficiency of `dgl embed`: videos/s of the whole job (decode in worker processes overlapped with
the encoder) vs the encoder alone on pre-decoded frames, same backend, batch and model (issue 7).

Clips: `--unique` synthetic 10 s clips (320x240, 25 fps, h264) copied to `--videos` files (decoding a copy
costs the same). Model: a random-init ViT-B/32 DGL exported to ONNX (cached in --workdir).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, exported_model  # noqa: E402

from dgl_deploy.data.loader import iter_video_batches  # noqa: E402
from dgl_deploy.data.synthetic import make_synthetic  # noqa: E402
from dgl_deploy.retrieval.embed import EmbedSettings, embed_videos  # noqa: E402
from dgl_deploy.runtime.backends.onnxruntime import OnnxEncoder  # noqa: E402


def clips(root: Path, videos: int, unique: int) -> Path:
    folder = root / f"clips-{videos}"
    if len(list(folder.glob("*.mp4"))) == videos:
        return folder
    make_synthetic(root / "unique", unique, seed=0, size=(240, 320), seconds=10.0, fps=25)
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted((root / "unique").glob("vid_*.mp4"))
    for i in range(videos):
        shutil.copy(sources[i % unique], folder / f"clip_{i:05d}.mp4")
    return folder


def encoder_only(encoder: OnnxEncoder, folder: Path, batch: int, workers: int) -> float:
    """videos/s of encode_videos on frames decoded beforehand (decoding not timed)."""
    frames = np.concatenate([b.frames for b in iter_video_batches(sorted(folder.glob("*.mp4")), encoder.frames,
                                                                    encoder.image_size, batch, workers)])
    start = time.perf_counter()
    for i in range(0, len(frames), batch):
        encoder.encode_videos(frames[i:i + batch])
    return len(frames) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=200)
    parser.add_argument("--unique", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", default="int8", choices=["fp32", "int8"])
    parser.add_argument("--workdir", type=Path, help="Keep clips and export here for reuse.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        export = exported_model(root)
        folder = clips(root, args.videos, args.unique)
        encoder = OnnxEncoder(export, device="cpu", precision=args.precision)
        encoder.encode_videos(np.zeros((1, encoder.frames, encoder.image_size, encoder.image_size, 3), np.uint8))
        alone = encoder_only(encoder, folder, args.batch, args.workers)
        settings = EmbedSettings(batch_size=args.batch, workers=args.workers)
        result = embed_videos(folder, root / "emb.npy", encoder, settings, overwrite=True)
    pipeline = result.embedded / result.seconds
    emit("embed_pipeline", {
        "model": f"ViT-B-32 DGL, ONNX Runtime CPU {args.precision}", "videos": args.videos,
        "clip": "10 s 320x240 25 fps h264", "batch": args.batch, "workers": args.workers,
        "encoder_only_videos_per_s": round(alone, 3), "pipeline_videos_per_s": round(pipeline, 3),
        "efficiency_percent": round(100 * pipeline / alone, 1), "target_percent": 90,
        "encode_s": round(result.encode_seconds, 1), "decode_wait_s": round(result.decode_wait_seconds, 1),
        "total_s": round(result.seconds, 1),
    })


if __name__ == "__main__":
    main()
