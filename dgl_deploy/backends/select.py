"""Pick and open a backend for a model path: a checkpoint runs on torch; an export folder (manifest.json)
runs on TensorRT / onnxruntime. `auto` says which one it chose."""

from __future__ import annotations

from pathlib import Path

from ..errors import DGLError
from .base import Encoder

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")


def open_encoder(model: str | Path, backend: str = "auto", device: str = "auto") -> Encoder:
    """Open `model` (checkpoint file or export folder) on `backend` ("auto" picks the fastest available)."""
    if backend not in BACKENDS:
        raise DGLError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    path = Path(model)
    if not path.exists():
        raise DGLError(f"{path}: no such model file or export folder")
    if path.is_file():
        if backend not in ("auto", "torch"):
            raise DGLError(f"{path} is a checkpoint: only the torch backend runs it (export it for {backend})")
        from .torch_backend import open_torch_encoder

        return open_torch_encoder(str(path), device=_torch_device(device))
    raise DGLError(f"{path}: export folders need the onnxruntime/TensorRT backends (not available yet)")


def _torch_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
