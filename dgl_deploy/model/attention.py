"""Functional forward passes through frozen open_clip blocks: causal text blocks and DGL's
global-local video blocks. Weights are read from the open_clip modules, never copied."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., L, D) -> (..., heads, L, D / heads)"""
    *lead, length, dim = x.shape
    return x.view(*lead, length, heads, dim // heads).transpose(-3, -2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(..., heads, L, hd) -> (..., L, heads * hd)"""
    x = x.transpose(-3, -2)
    return x.reshape(*x.shape[:-2], -1)


def _qkv(block: ResidualAttentionBlock, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ln_1 + the block's packed in-projection, split into heads: 3 x (..., heads, L, hd)."""
    attn = block.attn
    q, k, v = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    return _split_heads(q, attn.num_heads), _split_heads(k, attn.num_heads), _split_heads(v, attn.num_heads)


def _out_proj(block: ResidualAttentionBlock, heads_out: torch.Tensor) -> torch.Tensor:
    return F.linear(_merge_heads(heads_out), block.attn.out_proj.weight, block.attn.out_proj.bias)


def _mlp_residual(block: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    return x + block.mlp(block.ln_2(x))


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd)) v over (..., L, hd): PyTorch's fused kernel, or, while exported, plain MatMuls
    whose key transpose onnxruntime folds into the first one (the exporter's decomposition of SDPA scales the
    transposed keys, which leaves the transpose a separate copy of every key in every block)."""
    if not torch.compiler.is_exporting():
        return F.scaled_dot_product_attention(q, k, v)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)  # (..., Lq, Lk)
    return scores.softmax(-1) @ v


def causal_block(block: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    """One CLIP text block with the causal mask. x: (B, L, D)."""
    q, k, v = _qkv(block, x)  # (B, H, L, hd)
    x = x + _out_proj(block, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    return _mlp_residual(block, x)


def global_local_block(
    block: ResidualAttentionBlock, glob: torch.Tensor, frames: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """DGL_SPEC §3.4 with one batched attention per branch (no loop over frames, no masks).

    glob: (B, G, D) global prompt tokens; frames: (B, T, S, D) per-frame tokens.
    Frame tokens of frame t attend to [global ; frame t]; global tokens attend to [global ; all frames].
    """
    batch, num_frames, seq, _ = frames.shape
    qg, kg, vg = _qkv(block, glob)  # (B, H, G, hd)
    qf, kf, vf = _qkv(block, frames)  # (B, T, H, S, hd)
    heads, head_dim = kf.shape[2], kf.shape[-1]

    kg_t = kg.unsqueeze(1).expand(-1, num_frames, -1, -1, -1)  # (B, T, H, G, hd)
    vg_t = vg.unsqueeze(1).expand(-1, num_frames, -1, -1, -1)
    keys = torch.cat([kg_t, kf], -2).flatten(0, 1)  # (B*T, H, G+S, hd): 4-D hits the fused CPU/GPU kernels
    values = torch.cat([vg_t, vf], -2).flatten(0, 1)
    out_f = _attend(qf.flatten(0, 1), keys, values).unflatten(0, (-1, num_frames))

    kf_all = kf.transpose(1, 2).reshape(batch, heads, num_frames * seq, head_dim)  # (B, H, T*S, hd)
    vf_all = vf.transpose(1, 2).reshape(batch, heads, num_frames * seq, head_dim)
    out_g = _attend(qg, torch.cat([kg, kf_all], -2), torch.cat([vg, vf_all], -2))  # (B, H, G, hd)

    glob = _mlp_residual(block, glob + _out_proj(block, out_g))
    frames = _mlp_residual(block, frames + _out_proj(block, out_f))
    return glob, frames
