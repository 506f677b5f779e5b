"""The PyTorch backend: a DGLModel from a checkpoint, on CPU or CUDA (optionally with autocast)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch

from dgl_deploy.model.model import DGLModel
from dgl_deploy.model.pixels import normalize
from dgl_deploy.model.tokenizer import tokenizer_for
from dgl_deploy.runtime.backends.base import used_words


class TorchEncoder:
    """Encoder API over a DGLModel; prompts are computed once and reused for every batch."""

    backend = "torch"

    def __init__(self, model: DGLModel, fingerprint: str, device: str = "cpu", amp: str | None = None) -> None:
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        self.amp = amp  # None, "fp16" or "bf16" (CUDA autocast)
        self.fingerprint = fingerprint
        self.frames, self.image_size = model.config.frames, model.image_size
        self.frame_sampling = model.config.frame_sampling
        self.max_words, self.embed_dim = model.config.max_words, model.embed_dim
        self._tokenize = tokenizer_for(model)
        with torch.no_grad():
            self._prompts = model.prompts()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp is None:
            return contextlib.nullcontext()
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[self.amp]
        return torch.autocast(self.device.type, dtype=dtype)

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        ids = self._tokenize(texts)
        ids = ids[:, : used_words(ids)].to(self.device)
        with self._autocast():
            out = self.model.encode_text(ids, self._prompts)
        return out.float().cpu().numpy()

    @torch.inference_mode()
    def encode_videos(self, frames: np.ndarray) -> np.ndarray:
        x = normalize(torch.from_numpy(np.ascontiguousarray(frames)).to(self.device))  # (B, T, 3, H, W)
        with self._autocast():
            out = self.model.encode_video(x, self._prompts)
        return out.float().cpu().numpy()

    def describe(self) -> str:
        return f"torch ({self.device}, {self.amp or 'fp32'})"


def open_torch_encoder(path: str, device: str = "cpu", amp: str | None = None) -> TorchEncoder:
    """A TorchEncoder for a dgl-deploy checkpoint or a DGL reference checkpoint."""
    from dgl_deploy.model.checkpoint import model_fingerprint
    from dgl_deploy.model.loading import load_model

    model = load_model(path)
    return TorchEncoder(model, model_fingerprint(model), device=device, amp=amp)
