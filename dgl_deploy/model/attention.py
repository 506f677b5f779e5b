"""Functional forward passes through frozen open_clip blocks: causal text blocks and DGL's
global-local video blocks. Weights are read from the open_clip modules, never copied."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, ..., L, D) -> (B, heads, ..., L, D / heads)"""
    return x.unflatten(-1, (heads, -1)).movedim(-2, 1)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, ..., L, hd) -> (B, ..., L, heads * hd)"""
    return x.movedim(1, -2).flatten(-2)


def _qkv(block: ResidualAttentionBlock, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """ln_1 + the block's in-projection, split into heads: (B, ..., L, D) -> 3 x (B, heads, ..., L, hd).

    q, k and v are three MatMuls over the packed weight's thirds rather than one MatMul split afterwards: the
    exported graph then moves each straight into its head layout (one transpose each, no Split copy of the packed
    output), and its int8 copy quantises their shared input once (onnxruntime's MatMulIntegerToFloat)."""
    attn, x = block.attn, block.ln_1(x)
    weights, biases = attn.in_proj_weight.chunk(3), attn.in_proj_bias.chunk(3)
    return tuple(_split_heads(F.linear(x, w, b), attn.num_heads) for w, b in zip(weights, biases, strict=True))


def _out_proj(block: ResidualAttentionBlock, heads_out: torch.Tensor) -> torch.Tensor:
    return F.linear(_merge_heads(heads_out), block.attn.out_proj.weight, block.attn.out_proj.bias)


def _mlp_residual(block: ResidualAttentionBlock, x: torch.Tensor) -> torch.Tensor:
    return x + block.mlp(block.ln_2(x))


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd)) v over (B, H, ..., L, hd): PyTorch's fused kernel (on 4-D views, which it needs),
    or, while exported, plain MatMuls whose key transpose onnxruntime folds into the first one (the exporter's
    decomposition of SDPA scales the transposed keys, which leaves the transpose a separate copy of every key in
    every block)."""
    if not torch.compiler.is_exporting():
        out = F.scaled_dot_product_attention(q.flatten(1, -3), k.flatten(1, -3), v.flatten(1, -3))
        return out.view(q.shape)
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)  # (..., Lq, Lk)
    return scores.softmax(-1) @ v


def _attend_both(q: torch.Tensor, k1: torch.Tensor, v1: torch.Tensor, k2: torch.Tensor,
                 v2: torch.Tensor) -> torch.Tensor:
    """`_attend` over the keys [k1 ; k2] and values [v1 ; v2]. While exported, the scores against each part are
    concatenated instead of the keys and values (the scores of a few queries are far smaller than the keys)."""
    if not torch.compiler.is_exporting():
        return _attend(q, torch.cat([k1, k2], -2), torch.cat([v1, v2], -2))
    scale = q.shape[-1] ** -0.5  # on the scores, where onnxruntime folds it into the MatMuls
    scores = torch.cat([(q @ k1.transpose(-1, -2)) * scale, (q @ k2.transpose(-1, -2)) * scale], -1)
    p1, p2 = scores.softmax(-1).split([k1.shape[-2], k2.shape[-2]], -1)  # (..., Lq, L1), (..., Lq, L2)
    return p1 @ v1 + p2 @ v2


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
    Frame heads are laid out (B, H, T, S, hd), so all frames' keys are a free reshape to (B, H, T*S, hd).
    """
    num_frames = frames.shape[1]
    qg, kg, vg = _qkv(block, glob)  # (B, H, G, hd)
    qf, kf, vf = _qkv(block, frames)  # (B, H, T, S, hd)

    kg_t = kg.unsqueeze(2).expand(-1, -1, num_frames, -1, -1)  # (B, H, T, G, hd)
    vg_t = vg.unsqueeze(2).expand(-1, -1, num_frames, -1, -1)
    out_f = _attend(qf, torch.cat([kg_t, kf], -2), torch.cat([vg_t, vf], -2))  # (B, H, T, S, hd)
    out_g = _attend_both(qg, kg, vg, kf.flatten(2, 3), vf.flatten(2, 3))  # (B, H, G, hd)

    glob = _mlp_residual(block, glob + _out_proj(block, out_g))
    frames = _mlp_residual(block, frames + _out_proj(block, out_f))
    return glob, frames
