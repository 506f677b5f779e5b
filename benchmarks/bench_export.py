"""CPU benchmark of the export: PyTorch eager fp32 vs ONNX Runtime fp32 vs ONNX Runtime int8 (dynamic).

Video encoder (T frames, batch B) in videos/s and text encoder (batch 64) in texts/s, plus each variant's
cosine to PyTorch fp32 on the same inputs. Prints one JSON object.
    python benchmarks/bench_export.py --model ViT-B-32 --frames 12 --batch 4
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from dgl_deploy.export import export_onnx
from dgl_deploy.export.parity import Sizes, compare, sample_input, torch_embed
from dgl_deploy.model.model import create_model
from dgl_deploy.runtime.backends.onnxruntime import make_session, physical_cores


def throughput(fn: Callable[[], object], items: int, iters: int) -> float:
    """Items per second over `iters` timed calls after one warm-up call."""
    fn()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return items * iters / (time.perf_counter() - start)


def bench_role(model, folder: Path, role: str, batch: int, iters: int) -> dict[str, dict[str, float]]:
    """PyTorch eager vs each exported precision for one tower."""
    array = sample_input(Sizes.of(model), role, batch, np.random.default_rng(0))
    reference = torch_embed(model, role, array)
    with torch.no_grad():
        prompts = model.prompts()
    tensor = torch.from_numpy(array)
    from dgl_deploy.model.pixels import normalize

    def eager() -> object:
        with torch.inference_mode():
            return model.encode_text(tensor, prompts) if role == "text" else model.encode_video(normalize(tensor), prompts)

    results = {"torch_eager_fp32": {"per_s": throughput(eager, batch, iters), "cosine": 1.0}}
    suffix = {"fp32": ".onnx", "int8": ".int8.onnx"}
    for precision, ext in suffix.items():
        session = make_session(folder / f"{role}_encoder{ext}")
        name = session.get_inputs()[0].name
        out = session.run(None, {name: array})[0]
        speed = throughput(lambda s=session, n=name: s.run(None, {n: array}), batch, iters)
        results[f"onnxruntime_{precision}"] = {"per_s": speed, "cosine": compare(reference, out)["min_cosine"]}
    base = results["torch_eager_fp32"]["per_s"]
    for entry in results.values():
        entry["speedup"] = entry["per_s"] / base
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--latent", default="transformer")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--text-batch", type=int, default=64)
    parser.add_argument("--iters", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(physical_cores())
    torch.manual_seed(0)
    model = create_model(args.model, pretrained=None, latent=args.latent, frames=args.frames).eval()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        export_onnx(model, Path(tmp) / "export", precisions=("int8",), log=lambda line: print(line, file=sys.stderr))
        export_s = time.perf_counter() - start
        folder = Path(tmp) / "export"
        video = bench_role(model, folder, "video", args.batch, args.iters)
        text = bench_role(model, folder, "text", args.text_batch, args.iters)
    print(json.dumps({"model": args.model, "latent": args.latent, "frames": args.frames, "video_batch": args.batch,
                      "text_batch": args.text_batch, "threads": physical_cores(), "export_seconds": export_s,
                      "video_per_s": video, "text_per_s": text, "torch": torch.__version__}, indent=2))


if __name__ == "__main__":
    main()
