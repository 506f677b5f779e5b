"""CPU benchmark of the export against the usual CLIP pipeline: PyTorch eager fp32 vs ONNX Runtime fp32 vs
ONNX Runtime int8 (dynamic) DGL encoders (the bare session, one batch per run over every core; and for video also
`OnnxEncoder` as `dgl embed` runs it on CPU, `dgl_encoder_*`: one video per run, a single-threaded run per core
at once), and the plain-CLIP baseline (open_clip frame embeddings of the same
frames, mean-pooled, PyTorch fp32: `runtime.backends.meanpool`).

Video encoder (T frames, batch B, uint8 frames in: every variant normalises them itself) in videos/s and text
encoder (batch 64) in texts/s, interleaved: each repetition runs every variant once, in an order rotated per
repetition (`common.interleaved`); medians over `--repeats` (>= 10). Each DGL variant's cosine to PyTorch fp32
on the same inputs, and the parity the export recorded. ViT-B/32, random init (speed does not depend on the
weights). Prints one JSON object.
    python benchmarks/bench_export.py --model ViT-B-32 --frames 12 --batch 4 --repeats 10
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, interleaved  # noqa: E402

from dgl_deploy.export import export_onnx  # noqa: E402
from dgl_deploy.export.parity import Sizes, compare, sample_input, torch_embed  # noqa: E402
from dgl_deploy.model.model import DGLModel, create_model  # noqa: E402
from dgl_deploy.model.pixels import normalize  # noqa: E402
from dgl_deploy.runtime.backends.meanpool import MeanPoolEncoder  # noqa: E402
from dgl_deploy.runtime.backends.onnxruntime import OnnxEncoder, make_session, physical_cores  # noqa: E402
from dgl_deploy.runtime.manifest import Manifest  # noqa: E402

PRECISIONS = ("fp32", "int8")


def variants(model: DGLModel, folder: Path, manifest: Manifest, role: str,
             array: np.ndarray) -> dict[str, Callable[[], np.ndarray]]:
    """name -> a call embedding `array` (token ids or uint8 frames): PyTorch eager, each ONNX precision, and
    for video the mean-pooled plain CLIP."""
    with torch.no_grad():
        prompts = model.prompts()
    tensor = torch.from_numpy(array)

    @torch.inference_mode()
    def eager() -> np.ndarray:
        out = model.encode_text(tensor, prompts) if role == "text" else model.encode_video(normalize(tensor), prompts)
        return out.numpy()

    calls: dict[str, Callable[[], np.ndarray]] = {"torch_eager_fp32": eager}
    for precision in PRECISIONS:
        session = make_session(folder / manifest.graph(role, precision).file)
        name = session.get_inputs()[0].name
        calls[f"onnxruntime_{precision}"] = lambda s=session, n=name: s.run(None, {n: array})[0]
        if role == "video":  # as `dgl embed` runs it: one video per run, one single-threaded run per core at once
            encoder = OnnxEncoder(folder, device="cpu", precision=precision)
            calls[f"dgl_encoder_{precision}"] = lambda e=encoder: e.encode_videos(array)
    if role == "video":
        baseline = MeanPoolEncoder(model.clip, "bench", model.config.frames)
        calls["clip_meanpool_torch_fp32"] = lambda: baseline.encode_videos(array)
    return calls


def bench_role(model: DGLModel, folder: Path, manifest: Manifest, role: str, batch: int,
               repeats: int) -> dict[str, dict[str, Any]]:
    """Items/s (median), median ms per batch, cosine to PyTorch fp32 and speed-up over it, per variant."""
    array = sample_input(Sizes.of(model), role, batch, np.random.default_rng(0))
    reference = torch_embed(model, role, array)
    calls = variants(model, folder, manifest, role, array)
    cosines = {name: compare(reference, call())["min_cosine"] for name, call in calls.items()
               if not name.startswith("clip_")}  # the baseline is another model: no cosine
    times = interleaved(calls, repeats)
    results = {}
    for name, seconds in times.items():
        median = statistics.median(seconds)
        results[name] = {"per_s": round(batch / median, 3), "median_ms": round(1000 * median, 1),
                         "min_ms": round(1000 * min(seconds), 1)}
        if name in cosines:
            results[name]["cosine"] = round(cosines[name], 6)
        if name.startswith(("onnxruntime_", "dgl_encoder_")):
            precision = name.rsplit("_", 1)[1]
            results[name]["export_parity_min_cosine"] = manifest.graph(role, precision).parity.get("min_cosine")
    base = results["torch_eager_fp32"]["per_s"]
    for entry in results.values():
        entry["speedup"] = round(entry["per_s"] / base, 3)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--latent", default="transformer")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--text-batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(physical_cores())
    torch.manual_seed(0)
    model = create_model(args.model, pretrained=None, latent=args.latent, frames=args.frames).eval()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "export"
        start = time.perf_counter()
        manifest = export_onnx(model, folder, precisions=("int8",), log=lambda line: print(line, file=sys.stderr))
        export_s = time.perf_counter() - start
        video = bench_role(model, folder, manifest, "video", args.batch, args.repeats)
        text = bench_role(model, folder, manifest, "text", args.text_batch, args.repeats)
    emit("export", {
        "model": f"{args.model} (random init)", "latent": args.latent, "frames": args.frames, "video_batch": args.batch,
        "text_batch": args.text_batch, "threads": physical_cores(), "repeats": args.repeats,
        "timing": "interleaved, order rotated per repetition; medians", "export_seconds": round(export_s, 1),
        "video_per_s": video, "text_per_s": text,
        "int8_vs_clip_meanpool": round(video["onnxruntime_int8"]["per_s"] / video["clip_meanpool_torch_fp32"]["per_s"], 3),
        "dgl_encoder_int8_vs_clip_meanpool": round(video["dgl_encoder_int8"]["per_s"] /
                                                   video["clip_meanpool_torch_fp32"]["per_s"], 3),
    })


if __name__ == "__main__":
    main()
