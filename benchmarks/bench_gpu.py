"""GPU benchmark (needs an NVIDIA GPU): videos/s (T frames) at batch 1, 8, 32, 128 and texts/s for PyTorch eager
fp32, PyTorch fp16 autocast, onnxruntime CUDA and TensorRT fp16. Prints one JSON object; exits with a message
(status 0) where CUDA is absent.
    python benchmarks/bench_gpu.py --model ViT-B-32 --frames 12 --export /tmp/dgl-export
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

VIDEO_BATCHES = (1, 8, 32, 128)
TEXT_BATCH = 256


def throughput(fn: Callable[[], object], items: int, iters: int, sync: Callable[[], None]) -> float:
    """Items per second over `iters` calls after two warm-up calls (`sync` waits for the GPU)."""
    for _ in range(2):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return items * iters / (time.perf_counter() - start)


def encoders(args: argparse.Namespace, folder: Path) -> dict[str, object]:
    """Every backend under test, all on the same model."""
    from dgl_deploy.export import export_onnx
    from dgl_deploy.export.tensorrt import Profile, TrtSettings, build_engines
    from dgl_deploy.model.checkpoint import model_fingerprint
    from dgl_deploy.model.model import create_model
    from dgl_deploy.runtime.backends.onnxruntime import OnnxEncoder
    from dgl_deploy.runtime.backends.tensorrt import TensorRTEncoder
    from dgl_deploy.runtime.backends.torch_backend import TorchEncoder

    model = create_model(args.model, pretrained=None, frames=args.frames).eval()
    if not (folder / "manifest.json").is_file():
        export_onnx(model, folder, precisions=("fp16",), log=lambda line: print(line, file=sys.stderr))
        settings = TrtSettings(profiles={"video": Profile(1, 32, 128), "text": Profile(1, TEXT_BATCH, 1024)})
        build_engines(folder, settings, log=lambda line: print(line, file=sys.stderr))
    fingerprint = model_fingerprint(model)
    return {
        "torch_eager_fp32": TorchEncoder(model, fingerprint, device="cuda"),
        "torch_autocast_fp16": TorchEncoder(model, fingerprint, device="cuda", amp="fp16"),
        "onnxruntime_cuda_fp16": OnnxEncoder(folder, device="cuda", precision="fp16"),
        "tensorrt_fp16": TensorRTEncoder(folder),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--export", type=Path, default=Path("/tmp/dgl-bench-gpu-export"))
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA GPU here (torch.cuda.is_available() is False); nothing to measure", file=sys.stderr)
        return
    from dgl_deploy.export.parity import sample_frames

    results: dict[str, dict[str, float]] = {}
    texts = [f"a video of object {i} moving across a {i % 7}-coloured scene" for i in range(TEXT_BATCH)]
    for name, encoder in encoders(args, args.export).items():
        row = {}
        for batch in VIDEO_BATCHES:
            frames = sample_frames(encoder.frames, encoder.image_size, batch, np.random.default_rng(batch))
            row[f"videos_per_s_b{batch}"] = throughput(lambda e=encoder, f=frames: e.encode_videos(f), batch, args.iters,
                                                       torch.cuda.synchronize)
        row["texts_per_s"] = throughput(lambda e=encoder: e.encode_text(texts), TEXT_BATCH, args.iters,
                                        torch.cuda.synchronize)
        results[name] = row
    print(json.dumps({"model": args.model, "frames": args.frames, "gpu": torch.cuda.get_device_name(0),
                      "results": results}, indent=2))


if __name__ == "__main__":
    main()
