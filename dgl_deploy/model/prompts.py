"""The shared latent spaces (DGL_SPEC.md §1): the only trainable part of DGL besides the global prompts.

Both return, for K prompt layers, text prompts (K, Lt, Dt) and frame prompts (K, T, Ll, Dv).
They do not depend on the input, so they are computed once per forward pass (and baked in at export).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from open_clip.transformer import QuickGELU, ResidualAttentionBlock
from torch import nn


def prompt_init_bound(patch_size: int, width: int) -> float:
    """The reference's xavier-style uniform bound sqrt(6 / (3 p^2 + Dv))."""
    return math.sqrt(6.0 / (3 * patch_size**2 + width))


class TransformerLatent(nn.Module):
    """Embedding table (Lt + T*Ll, K*Dv) -> one pre-LN transformer block per layer's sequence -> prompts."""

    def __init__(self, *, layers: int, text_prompts: int, local_prompts: int, frames: int,
                 vision_width: int, text_width: int) -> None:
        super().__init__()
        self.layers, self.text_prompts, self.local_prompts, self.frames = layers, text_prompts, local_prompts, frames
        self.vision_width = vision_width
        self.embedding = nn.Embedding(text_prompts + frames * local_prompts, layers * vision_width)
        self.block = ResidualAttentionBlock(vision_width, max(1, vision_width // 64), act_layer=QuickGELU)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(vision_width, 2 * vision_width)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(2 * vision_width, text_width)),
        ]))

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.embedding.num_embeddings
        seq = self.embedding.weight.view(n, self.layers, self.vision_width).transpose(0, 1)  # (K, Lt+T*Ll, Dv)
        out = self.block(seq)  # (K, Lt+T*Ll, Dv), no mask, K is the batch
        text = self.mlp(out[:, : self.text_prompts])  # (K, Lt, Dt)
        frame = out[:, self.text_prompts:].reshape(self.layers, self.frames, self.local_prompts, self.vision_width)
        return text, frame  # (K, Lt, Dt), (K, T, Ll, Dv)


class LinearLatent(nn.Module):
    """One parameter P (Ll, K*Dv) gives frame prompts directly and text prompts by two linear maps."""

    def __init__(self, *, layers: int, local_prompts: int, frames: int, vision_width: int, text_width: int,
                 patch_size: int) -> None:
        super().__init__()
        self.layers, self.local_prompts, self.frames, self.vision_width = layers, local_prompts, frames, vision_width
        bound = prompt_init_bound(patch_size, vision_width)
        self.prompt = nn.Parameter(torch.empty(local_prompts, layers * vision_width).uniform_(-bound, bound))
        self.pre_proj = nn.Linear(vision_width, text_width)
        self.post_proj = nn.Linear(vision_width, text_width)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.prompt.view(self.local_prompts, self.layers, self.vision_width).transpose(0, 1)  # (K, Ll, Dv)
        text = torch.cat([self.pre_proj(p), self.post_proj(p)], dim=1)  # (K, 2*Ll, Dt)
        frame = p[:, None].expand(-1, self.frames, -1, -1)  # (K, T, Ll, Dv): the same for every frame
        return text, frame
