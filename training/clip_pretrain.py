"""Contrastive pre-training of a small open_clip CLIP on (image, caption) pairs.

No pretrained CLIP can be downloaded on an offline machine, so the demo first teaches a tiny CLIP what
single frames show (colour, shape, position) and saves it as an ordinary open_clip state dict; DGL then
freezes it like any pretrained CLIP (`--pretrained PATH`). Images come from the real decoder.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from open_clip.loss import ClipLoss
from safetensors.torch import save_file

from dgl_deploy.files import atomic_path
from dgl_deploy.model.backbone import create_clip
from dgl_deploy.model.pixels import normalize
from dgl_deploy.model.tokenizer import Tokenizer


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of the image-text pre-training."""

    model_name: str = "dgl-mini"  # registered open_clip tower config
    steps: int = 400  # optimiser steps
    batch_size: int = 128  # image-caption pairs per step
    lr: float = 1e-3  # AdamW peak learning rate
    weight_decay: float = 0.1  # AdamW weight decay
    warmup: float = 0.1  # fraction of steps with linear warm-up, then cosine decay
    seed: int = 0  # sampling and init seed


def pretrain_clip(images: np.ndarray, captions: Sequence[str], out: Path | str, config: PretrainConfig = PretrainConfig(),
                  log: Callable[[str], None] = print) -> Path:
    """Train a random-init CLIP on `images` (N, H, W, 3) uint8 with `captions` (N,); save its state dict."""
    torch.manual_seed(config.seed)
    clip, _ = create_clip(config.model_name, None)
    clip.requires_grad_(True).train()
    clip.token_embedding.requires_grad_(False)  # 49k x D rows, of which the captions use ~40: a dense AdamW
    # update of the whole table would cost 5x the rest of the step; random fixed word vectors are enough
    ids = Tokenizer(clip.context_length, clip.vocab_size)(list(captions))  # (N, context) int64
    pixels = normalize(torch.from_numpy(images))  # (N, 3, H, W)
    optimizer = torch.optim.AdamW([p for p in clip.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(config.steps, config.warmup))
    loss_fn = ClipLoss()
    generator = torch.Generator().manual_seed(config.seed)
    for step in range(config.steps):
        batch = _distinct_caption_batch(ids, config.batch_size, generator)
        image_features, text_features, scale = clip(pixels[batch], ids[batch])[:3]
        loss = loss_fn(image_features, text_features, scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % max(1, config.steps // 10) == 0 or step == config.steps - 1:
            log(f"pretrain step {step + 1}/{config.steps} loss {loss.item():.3f}")
    out = Path(out)
    with atomic_path(out) as tmp:
        save_file({k: v.detach().contiguous() for k, v in clip.state_dict().items()}, str(tmp))
    return out


def _distinct_caption_batch(ids: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Random pairs whose captions all differ, so no in-batch negative is a true match."""
    order = torch.randperm(ids.shape[0], generator=generator)
    _, first = np.unique(ids[order].numpy(), axis=0, return_index=True)
    chosen = order[torch.from_numpy(np.sort(first))]
    return chosen[:size]


def _warmup_cosine(steps: int, warmup: float) -> Callable[[int], float]:
    warm = max(1, int(steps * warmup))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

    return factor
