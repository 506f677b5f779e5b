"""CLIP pixel normalisation in torch: the step after the shared numpy preprocessing (data.video), inside the
model side only. Exported graphs contain it, so runtimes feed uint8 frames."""

from __future__ import annotations

import numpy as np
import torch
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD


def normalize(frames: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float32 with CLIP mean/std; plain torch ops (ONNX-exportable)."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(frames)
    x = frames.movedim(-1, -3).to(torch.float32) / 255.0  # (..., 3, H, W)
    mean = torch.tensor(OPENAI_DATASET_MEAN, dtype=torch.float32, device=x.device).view(3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD, dtype=torch.float32, device=x.device).view(3, 1, 1)
    return (x - mean) / std
