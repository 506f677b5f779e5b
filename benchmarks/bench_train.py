"""Training-step benchmark: time and peak memory of one DGL optimizer step (forward + backward + AdamW).

CPU (default): ViT-B/32 (random init, no download), T=12 frames, W=32, a small batch; reports seconds
per step and peak RSS. CUDA (when present): samples/s at batch 128 with AMP and peak GPU memory, for our
batched global-local attention and for a straightforward eager baseline of the spec (a Python loop over
frames, an fp32 additive mask built every step) written only here, for comparison.

    python benchmarks/bench_train.py --device cpu --batch-size 4 --steps 3
    python benchmarks/bench_train.py --device cuda --batch-size 128 --amp bf16 --baseline
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import time
from unittest import mock

import torch
import torch.nn.functional as F

from dgl_deploy.model import model as model_module
from dgl_deploy.model.model import create_model
from dgl_deploy.training.loop import contrastive_loss


def eager_global_local_block(block, glob: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Baseline of DGL_SPEC §3.4: one attention call per frame plus a masked global attention."""
    batch, num_frames, seq, width = frames.shape
    attn = block.attn
    h_glob, h_frames = block.ln_1(glob), block.ln_1(frames)  # (B, G, D), (B, T, S, D)
    outs = []
    for t in range(num_frames):  # frame t attends to [global ; frame t]
        keys = torch.cat([h_glob, h_frames[:, t]], dim=1)  # (B, G+S, D)
        out, _ = F.multi_head_attention_forward(
            h_frames[:, t].transpose(0, 1), keys.transpose(0, 1), keys.transpose(0, 1), width, attn.num_heads,
            attn.in_proj_weight, attn.in_proj_bias, None, None, False, 0.0, attn.out_proj.weight, attn.out_proj.bias,
            training=False, need_weights=False)
        outs.append(out.transpose(0, 1))
    keys = torch.cat([h_glob, h_frames.flatten(1, 2)], dim=1)  # (B, G+T*S, D)
    mask = torch.zeros(glob.shape[1], keys.shape[1], dtype=torch.float32, device=glob.device)  # built every step
    out_g, _ = F.multi_head_attention_forward(
        h_glob.transpose(0, 1), keys.transpose(0, 1), keys.transpose(0, 1), width, attn.num_heads,
        attn.in_proj_weight, attn.in_proj_bias, None, None, False, 0.0, attn.out_proj.weight, attn.out_proj.bias,
        training=False, need_weights=False, attn_mask=mask.to(h_glob.dtype))
    glob = glob + out_g.transpose(0, 1)
    frames = frames + torch.stack(outs, dim=1)
    return glob + block.mlp(block.ln_2(glob)), frames + block.mlp(block.ln_2(frames))


def run(args: argparse.Namespace, eager: bool) -> dict:
    """Time `args.steps` optimizer steps after one warm-up step."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = create_model(args.model, None, frames=args.frames, max_words=args.max_words).to(device).train()
    params = list(model.prompt_parameters().values())
    optimizer = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.2)
    ids = torch.randint(1, 49000, (args.batch_size, args.max_words), device=device)
    ids[:, -1] = 49407  # EOT
    frames = torch.randn(args.batch_size, args.frames, 3, model.image_size, model.image_size, device=device)
    use_amp = device.type == "cuda" and args.amp != "none"
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16 if args.amp == "bf16" else torch.float16)
                if use_amp else contextlib.nullcontext())
    scaler = torch.amp.GradScaler(device.type, enabled=use_amp and args.amp == "fp16")
    patch = mock.patch.object(model_module, "global_local_block", eager_global_local_block) if eager else contextlib.nullcontext()

    def step() -> None:
        with autocast:
            text, video = model(ids, frames)
        loss = contrastive_loss(model.logits(text.float(), video.float()))
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    with patch:
        step()  # warm-up (allocations, kernels)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    result = {"impl": "eager baseline" if eager else "dgl-deploy", "step_s": round(seconds, 4),
              "samples_per_s": round(args.batch_size / seconds, 2)}
    if device.type == "cuda":
        result["peak_gpu_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    else:
        result["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)  # Linux: KiB
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="[128 on CUDA, 4 on CPU]")
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--max-words", type=int, default=32)
    parser.add_argument("--amp", choices=("bf16", "fp16", "none"), default="bf16", help="CUDA only")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--baseline", action="store_true", help="also time the eager baseline (after ours)")
    args = parser.parse_args()
    args.batch_size = args.batch_size or (128 if args.device.startswith("cuda") else 4)
    config = {k: v for k, v in vars(args).items() if k != "baseline"}
    config["threads"] = torch.get_num_threads()
    results = [run(args, eager=False)] + ([run(args, eager=True)] if args.baseline else [])
    print(json.dumps({"config": config, "results": results}, indent=2))


if __name__ == "__main__":
    main()
