"""Pick and open a backend for a model path: a checkpoint runs on torch; an export folder (manifest.json)
runs on TensorRT / onnxruntime. `auto` says which one it chose (one line through `log`, stderr by default).

auto order for an export folder: TensorRT engines (built for this GPU + TensorRT, package importable, CUDA
present) -> onnxruntime CUDA -> onnxruntime CPU. Explicit choices that cannot work raise a DGLError that
names what is missing; nothing falls back silently.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from dgl_deploy.errors import DGLError
from dgl_deploy.runtime.backends.base import Encoder

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
Log = Callable[[str], None]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def open_encoder(model: str | Path, backend: str = "auto", device: str = "auto", precision: str = "auto",
                 log: Log | None = _stderr, strict: bool = False) -> Encoder:
    """Open `model` (checkpoint file or export folder) on `backend` ("auto" picks the fastest available).
    `precision` (exports only): auto, fp32, fp16, int8 (onnxruntime) — the export must contain it; on CPU, auto
    picks by the export's parity and speed measured on this host, and a forced precision whose parity misses here
    is a warning (always shown, stderr when `log` is None), or refused with `strict`."""
    if backend not in BACKENDS:
        raise DGLError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    path = Path(model)
    if not path.exists():
        raise DGLError(f"{path}: no such model file or export folder")
    encoder = _open_checkpoint(path, backend, device) if path.is_file() else \
        _open_export(path, backend, device, precision, strict)
    note = getattr(encoder, "precision_note", "")
    if log is not None:
        log(f"{path}: using {encoder.describe()}" + (f": {note}" if note else ""))
    warning = getattr(encoder, "precision_warning", None)
    if warning:
        (log or _stderr)(f"{path}: {warning}")
    return encoder


def _open_checkpoint(path: Path, backend: str, device: str) -> Encoder:
    if backend not in ("auto", "torch"):
        raise DGLError(f"{path} is a checkpoint: only the torch backend runs it (export it with `dgl export` "
                       f"for {backend})")
    from dgl_deploy.runtime.backends.torch_backend import open_torch_encoder

    return open_torch_encoder(str(path), device=_torch_device(device))


def _open_export(path: Path, backend: str, device: str, precision: str, strict: bool) -> Encoder:
    from dgl_deploy.runtime.manifest import load_manifest

    manifest = load_manifest(path)
    if backend == "torch":
        source = manifest.checkpoint or "the source checkpoint"
        raise DGLError(f"{path} is an export folder: the torch backend runs checkpoints ({source})")
    if backend in ("auto", "tensorrt"):
        from dgl_deploy.runtime.backends.tensorrt import tensorrt_unavailable

        reason = tensorrt_unavailable(path, manifest) if device in ("auto", "cuda") else "device cpu was requested"
        if reason is None:
            from dgl_deploy.runtime.backends.tensorrt import TensorRTEncoder

            return TensorRTEncoder(path)
        if backend == "tensorrt":
            raise DGLError(f"tensorrt backend requested but {reason}")
    from dgl_deploy.runtime.backends.onnxruntime import OnnxEncoder

    return OnnxEncoder(path, device=device, precision=precision, strict=strict)


def _torch_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
