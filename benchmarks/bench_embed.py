"""`dgl embed` end to end on CPU, two parts:

1. efficiency: videos/s of the whole job (decode in worker processes overlapped with the encoder) vs the
   encoder alone on pre-decoded frames, same backend, batch and model (issue 7).
2. peer (`--peer-videos N`, 0 to skip): `dgl embed` at `--precision auto` (what `open_encoder` picks; int8 on
   CPU where the export's parity held) vs the usual plain-CLIP pipeline as users write it, with its own decoding,
   not this project's: decord (`VideoReader(path, num_threads=1)`, `get_batch` of 12 frames at
   `np.linspace(0, n - 1, 12).round()`), open_clip's own preprocess transform per frame (PIL: bicubic resize of
   the shorter side to 224, centre crop, ToTensor, Normalize), decoding in a ThreadPoolExecutor of `--workers`
   threads that prefetches the next batch while the current one is encoded, then open_clip's `encode_image` in
   PyTorch fp32, frame embeddings L2-normalised and mean-pooled. `dgl embed` runs through `embed_videos` as the
   CLI does; all in one process with the same threads, interleaved (`common.interleaved`). The peer runs three
   times: at `dgl embed`'s batch (16), at its fastest batch on this CPU (`--peer-batch`, 4: open_clip fp32 on 2
   cores ran 1.55 / 1.38 videos/s at batch 4 / 16, encoder alone), and scheduled like `dgl embed`'s CPU video
   tower (one video per call, a single-threaded call per core at once). Also DGL's auto-precision embeddings
   against its fp32 ones on those videos.

Clips: `--unique` synthetic 10 s clips (320x240, 25 fps, h264) copied to `--videos` files (decoding a copy
costs the same). Model: a random-init ViT-B/32 DGL exported to ONNX (cached in --workdir); the peer's CLIP is
open_clip's random-init ViT-B/32 (seed 0; speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, exported_model, interleaved, warm_up  # noqa: E402

from dgl_deploy.data.loader import iter_video_batches  # noqa: E402
from dgl_deploy.data.synthetic import make_synthetic  # noqa: E402
from dgl_deploy.retrieval.embed import EmbedSettings, embed_videos  # noqa: E402
from dgl_deploy.retrieval.store import open_store  # noqa: E402
from dgl_deploy.runtime.backends.onnxruntime import OnnxEncoder  # noqa: E402
from dgl_deploy.runtime.backends.select import open_encoder  # noqa: E402


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


def peer(export: Path, folder: Path, root: Path, settings: EmbedSettings, peer_batch: int, repeats: int) -> dict:
    """`dgl embed` at auto precision vs the plain-CLIP pipeline with its own decoding (module docstring)."""
    from clip_peer import ClipPeer  # torch and open_clip: imported here, not by the decoder processes (see there)

    dgl = open_encoder(export, backend="onnxruntime", device="cpu", precision="auto", log=None)
    clip = ClipPeer(dgl.frames, settings.workers)
    paths = sorted(folder.glob("*.mp4"))
    videos, batch = len(paths), settings.batch_size
    calls = {"dgl_embed_auto": lambda: embed_videos(folder, root / "peer-dgl_embed_auto.npy", dgl, settings,
                                                    overwrite=True),
             "clip_meanpool_torch_fp32": lambda: clip.run(paths, batch),
             "clip_meanpool_torch_fp32_best_batch": lambda: clip.run(paths, peer_batch),
             "clip_meanpool_torch_fp32_side_by_side": lambda: clip.run(paths, batch, side_by_side=True)}
    times = interleaved(calls, repeats, warmup=0)
    rates = {name: round(videos / statistics.median(seconds), 3) for name, seconds in times.items()}
    return {"videos": videos, "repeats": repeats, "dgl_precision": dgl.precision, "dgl_batch": settings.batch_size,
            "clip_best_batch": peer_batch, "clip_decoding": f"decord + open_clip preprocess, {settings.workers} "
            "prefetching threads (its own, not dgl-deploy's)", "videos_per_s": rates,
            "seconds": {name: [round(t, 1) for t in seconds] for name, seconds in times.items()},
            "dgl_vs_clip_meanpool": round(rates["dgl_embed_auto"] / rates["clip_meanpool_torch_fp32"], 3),
            "dgl_vs_clip_meanpool_best_batch": round(rates["dgl_embed_auto"] /
                                                     rates["clip_meanpool_torch_fp32_best_batch"], 3),
            "dgl_vs_clip_meanpool_side_by_side": round(rates["dgl_embed_auto"] /
                                                       rates["clip_meanpool_torch_fp32_side_by_side"], 3),
            "target_ratio": 3.0, "dgl_auto_vs_fp32_cosine": auto_vs_fp32(export, folder, root, settings)}


def auto_vs_fp32(export: Path, folder: Path, root: Path, settings: EmbedSettings) -> dict:
    """min / median cosine of the peer run's auto-precision rows to fp32 rows of the same videos."""
    embed_videos(folder, root / "peer-fp32.npy", OnnxEncoder(export, device="cpu", precision="fp32"), settings,
                 overwrite=True)
    auto, exact = (open_store(root / f"peer-{name}.npy") for name in ("dgl_embed_auto", "fp32"))
    assert auto.ids == exact.ids
    cosine = (np.asarray(auto.vectors, np.float32) * np.asarray(exact.vectors, np.float32)).sum(1)  # unit rows
    return {"min": round(float(cosine.min()), 6), "median": round(float(np.median(cosine)), 6)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=200)
    parser.add_argument("--unique", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--precision", default="int8", choices=["fp32", "int8"])
    parser.add_argument("--peer-videos", type=int, default=96, help="Videos of the peer comparison (0: skip it).")
    parser.add_argument("--peer-batch", type=int, default=4, help="Batch of the plain-CLIP pipeline (its fastest here).")
    parser.add_argument("--peer-repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, help="Keep clips and export here for reuse.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        export = exported_model(root)
        folder = clips(root, args.videos, args.unique)
        encoder = OnnxEncoder(export, device="cpu", precision=args.precision)
        warm_up(encoder)
        alone = encoder_only(encoder, folder, args.batch, args.workers)
        settings = EmbedSettings(batch_size=args.batch, workers=args.workers)
        result = embed_videos(folder, root / "emb.npy", encoder, settings, overwrite=True)
        compared = peer(export, clips(root, args.peer_videos, args.unique), root, settings, args.peer_batch,
                        args.peer_repeats) \
            if args.peer_videos else None
    pipeline = result.embedded / result.seconds
    emit("embed_pipeline", {
        "model": f"ViT-B-32 DGL, ONNX Runtime CPU {args.precision}", "videos": args.videos,
        "clip": "10 s 320x240 25 fps h264", "batch": args.batch, "workers": args.workers,
        "encoder_only_videos_per_s": round(alone, 3), "pipeline_videos_per_s": round(pipeline, 3),
        "efficiency_percent": round(100 * pipeline / alone, 1), "target_percent": 90,
        "encode_s": round(result.encode_seconds, 1), "decode_wait_s": round(result.decode_wait_seconds, 1),
        "total_s": round(result.seconds, 1), **({"peer": compared} if compared else {}),
    })


if __name__ == "__main__":
    main()
