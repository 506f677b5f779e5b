"""CLIP pixel normalisation in torch: the step after the shared numpy preprocessing (data.video), inside the
model side only. Exported graphs contain it, so runtimes feed uint8 frames: either as `normalize` + the patch
convolution, or folded into one patch projection over raw pixels (`pixel_patches`, `folded_patch_projection`),
the same linear map written as a MatMul, which needs no channel-first copy of the frames."""

from __future__ import annotations

import numpy as np
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD


def normalize(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float32 with CLIP mean/std; plain torch ops (ONNX-exportable)."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(frames)
    x = frames.movedim(-1, -3).to(torch.float32) / 255.0  # (..., 3, H, W)
    mean, std = (t.to(x.device).view(3, 1, 1) for t in _mean_std())
    return (x - mean) / std


def _mean_std() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(OPENAI_DATASET_MEAN, dtype=torch.float32), torch.tensor(OPENAI_DATASET_STD, dtype=torch.float32)


def pixel_patches(frames: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, T, H, W, 3) uint8 -> (B*T, N, P*P*3) float32 raw pixel values of each P x P patch, row-major over the
    grid, each patch flattened as (row, column, channel). The reordering runs on the uint8 pixels (4x fewer
    bytes)."""
    _, _, height, width, _ = frames.shape
    x = frames.reshape(-1, height // patch, patch, width // patch, patch, 3)  # (B*T, g, P, g, P, 3)
    x = x.permute(0, 1, 3, 2, 4, 5)  # (B*T, g, g, P, P, 3)
    return x.reshape(x.shape[0], -1, patch * patch * 3).to(torch.float32)


def folded_patch_projection(conv_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP's bias-free patch convolution (Dv, 3, P, P) with `normalize` folded in, as (weight (P*P*3, Dv),
    bias (Dv,)) over `pixel_patches`: conv(normalize(x)) = pixel_patches(x) @ weight + bias."""
    mean, std = _mean_std()
    w = conv_weight.detach().to(torch.float32) / std.view(1, 3, 1, 1)  # (Dv, 3, P, P), per channel 1/std
    bias = -(w * mean.view(1, 3, 1, 1)).sum((1, 2, 3))  # (Dv,)
    weight = (w / 255.0).permute(0, 2, 3, 1).reshape(w.shape[0], -1).t().contiguous()  # (P*P*3, Dv)
    return weight, bias
