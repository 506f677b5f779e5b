"""The PyTorch backend: a DGLModel from a checkpoint, on CPU or CUDA (optionally with autocast).

Precision: a checkpoint computes at fp32; `--precision fp16` runs it under CUDA autocast (fp16) on a CUDA device;
anything else (int8, or fp16 on CPU) is refused in one line (`checkpoint_precision`): int8 graphs come from an
export (`dgl export`). `auto` is fp32."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch

from dgl_deploy.errors import DGLError
from dgl_deploy.model.model import DGLModel
from dgl_deploy.model.pixels import normalize
from dgl_deploy.model.tokenizer import tokenizer_for
from dgl_deploy.runtime.backends.base import PrecisionPick, used_words
from dgl_deploy.runtime.device import CPU, CUDA, Device, parse_device


class TorchEncoder:
    """Encoder API over a DGLModel; prompts are computed once and reused for every batch."""

    backend = "torch"
    manifest = None  # a checkpoint: no export parity
    host_check = None
    video_lanes = 0  # whole batches

    def __init__(self, model: DGLModel, fingerprint: str, device: Device | str = "cpu", amp: str | None = None) -> None:
        self.device = torch_device(parse_device(device))
        self._torch_device = torch.device(str(self.device))
        self.model = model.eval().to(self._torch_device)
        self.amp = amp  # None, "fp16" or "bf16" (CUDA autocast)
        self.precision = amp or "fp32"
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
        return torch.autocast(self._torch_device.type, dtype=dtype)

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        ids = self._tokenize(texts)
        ids = ids[:, : used_words(ids)].to(self._torch_device)
        with self._autocast():
            out = self.model.encode_text(ids, self._prompts)
        return out.float().cpu().numpy()

    @torch.inference_mode()
    def encode_videos(self, frames: np.ndarray) -> np.ndarray:
        x = normalize(torch.from_numpy(np.ascontiguousarray(frames)).to(self._torch_device))  # (B, T, 3, H, W)
        with self._autocast():
            out = self.model.encode_video(x, self._prompts)
        return out.float().cpu().numpy()

    def describe(self) -> str:
        return f"torch ({self._torch_device}, {self.precision})"


def torch_device(asked: Device) -> Device:
    """Where torch runs for `asked`: auto is cuda when torch sees a GPU, else cpu."""
    if asked.kind != "auto":
        return asked
    return CUDA if torch.cuda.is_available() else CPU


def checkpoint_precision(path: str, asked: str, device: Device) -> PrecisionPick:
    """What a checkpoint computes at for `asked` on `device` (see the module docstring); DGLError naming the
    checkpoint, the precision asked and the one it has."""
    if asked in ("auto", "fp32"):
        return PrecisionPick("fp32")
    if asked == "fp16" and device.kind == "cuda":
        return PrecisionPick("fp16", "fp16 through CUDA autocast")
    where = "fp16 only under CUDA autocast (--device cuda)" if asked == "fp16" else \
        f"{asked} only from an export (`dgl export {path} --out DIR`)"
    raise DGLError(f"{path}: a checkpoint runs on torch at fp32, --precision {asked} was asked on {device}; it "
                   f"computes {where}, or use --precision fp32 (or auto)")


def open_torch_encoder(path: str, device: Device | str = "cpu", amp: str | None = None) -> TorchEncoder:
    """A TorchEncoder for a dgl-deploy checkpoint or a DGL reference checkpoint."""
    from dgl_deploy.model.checkpoint import model_fingerprint
    from dgl_deploy.model.loading import load_model

    model = load_model(path)
    return TorchEncoder(model, model_fingerprint(model), device=device, amp=amp)
