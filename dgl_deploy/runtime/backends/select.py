"""Pick and open a backend for a model path: a checkpoint runs on torch; an export folder (manifest.json)
runs on TensorRT / onnxruntime. `auto` says which one it chose (one line through `log`, stderr by default).

auto order for an export folder: TensorRT engines (built for this GPU + TensorRT, package importable, CUDA
present, built at the --precision asked) -> onnxruntime CUDA -> onnxruntime CPU. Explicit choices that cannot work
raise a DGLError that names what is missing or what was asked against what the model has; nothing falls back
silently. `--device` is parsed once (`runtime.device.parse_device`) before anything else is looked at.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dgl_deploy.errors import DGLError
from dgl_deploy.runtime.backends.base import ASKED_PRECISIONS, Encoder, PrecisionPick
from dgl_deploy.runtime.device import Device, parse_device, resolved_device

BACKENDS = ("auto", "tensorrt", "onnxruntime", "torch")
Log = Callable[[str], None]


@dataclass(frozen=True)
class Choice:
    """What `open_encoder` opens, decided from the model files and this host before any encoder exists
    (`resolve`): the Ray driver records it and its actors open exactly it."""

    path: Path  # the checkpoint file or export folder
    backend: str  # "torch", "tensorrt" or "onnxruntime"
    device: Device  # where it runs: cpu, cuda or cuda:N (never auto)
    pick: PrecisionPick  # what it computes at (never auto), and why

    @property
    def precision(self) -> str:
        return self.pick.precision


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def open_encoder(model: str | Path, backend: str = "auto", device: str | Device = "auto", precision: str = "auto",
                 log: Log | None = _stderr, strict: bool = False) -> Encoder:
    """Open `model` (checkpoint file or export folder) on `backend` ("auto" picks the fastest available), on
    `device` (auto, cpu, cuda, cuda:N), at `precision` (auto, fp32, fp16, int8): see `resolve`. On CPU, auto picks
    by the export's parity and speed measured on this host, and a forced precision whose parity misses here is a
    warning (always shown, stderr when `log` is None), or refused with `strict`."""
    choice = resolve(model, backend, device, precision, strict)
    encoder = open_choice(choice)
    if log is not None:
        log(f"{choice.path}: using {encoder.describe()}" + (f": {choice.pick.note}" if choice.pick.note else ""))
    if choice.pick.warning:
        (log or _stderr)(f"{choice.path}: {choice.pick.warning}")
    return encoder


def resolve(model: str | Path, backend: str = "auto", device: str | Device = "auto", precision: str = "auto",
            strict: bool = False) -> Choice:
    """The backend, device and precision `model` runs at here, `auto` resolved, without opening an encoder. Every
    backend honours `precision` or refuses it in one line: a checkpoint (torch) computes fp32, or fp16 under CUDA
    autocast; TensorRT engines the precision they were built at (auto takes them only then); onnxruntime the
    export's graphs of that precision."""
    where = parse_device(device)  # first: a device the grammar refuses is refused the same way everywhere
    if backend not in BACKENDS:
        raise DGLError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if precision not in ASKED_PRECISIONS:
        raise DGLError(f"unknown precision {precision!r}: choose one of {', '.join(ASKED_PRECISIONS)}")
    path = Path(model)
    if not path.exists():
        raise DGLError(f"{path}: no such model file or export folder")
    if path.is_file():
        return _checkpoint_choice(path, backend, where, precision)
    return _export_choice(path, backend, where, precision, strict)


def open_choice(choice: Choice) -> Encoder:
    """The encoder `resolve` chose (for onnxruntime and TensorRT no graph or engine is loaded before first use)."""
    if choice.backend == "torch":
        from dgl_deploy.runtime.backends.torch_backend import open_torch_encoder

        amp = None if choice.precision == "fp32" else choice.precision
        return open_torch_encoder(str(choice.path), device=choice.device, amp=amp)
    if choice.backend == "tensorrt":
        from dgl_deploy.runtime.backends.tensorrt import TensorRTEncoder

        return TensorRTEncoder(choice.path, device=choice.device, precision=choice.precision)
    from dgl_deploy.runtime.backends.onnxruntime import OnnxEncoder

    return OnnxEncoder(choice.path, device=choice.device, precision=choice.pick)


def _checkpoint_choice(path: Path, backend: str, device: Device, precision: str) -> Choice:
    if backend not in ("auto", "torch"):
        raise DGLError(f"{path} is a checkpoint: only the torch backend runs it (export it with `dgl export` "
                       f"for {backend})")
    from dgl_deploy.runtime.backends.torch_backend import checkpoint_precision, torch_device

    device = torch_device(device)
    return Choice(path, "torch", device, checkpoint_precision(str(path), precision, device))


def _export_choice(path: Path, backend: str, device: Device, precision: str, strict: bool) -> Choice:
    from dgl_deploy.runtime.manifest import load_manifest

    manifest = load_manifest(path)
    if backend == "torch":
        source = manifest.checkpoint or "the source checkpoint"
        raise DGLError(f"{path} is an export folder: the torch backend runs checkpoints ({source})")
    if backend in ("auto", "tensorrt"):
        from dgl_deploy.runtime.backends import tensorrt

        refusal = tensorrt.precision_refusal(path, manifest, precision)
        if refusal and backend == "tensorrt":
            raise DGLError(refusal)
        reason = refusal or (f"device {device} was requested" if device.kind == "cpu" else
                             tensorrt.tensorrt_unavailable(path, manifest, device.ordinal))
        if reason is None:
            return Choice(path, "tensorrt", resolved_device(device, gpu=True),
                          PrecisionPick(tensorrt.engine_precision(manifest)))
        if backend == "tensorrt":
            raise DGLError(f"tensorrt backend requested but {reason}")
    from dgl_deploy.runtime.backends.onnxruntime import GPU_PROVIDERS, pick_precision, providers_for

    gpu = providers_for(device)[0][0] in GPU_PROVIDERS
    return Choice(path, "onnxruntime", resolved_device(device, gpu),
                  pick_precision(path, manifest, gpu, precision, strict=strict))


__all__ = ["BACKENDS", "Choice", "Log", "open_encoder", "open_choice", "resolve"]
