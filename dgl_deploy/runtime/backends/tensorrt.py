"""The TensorRT backend: serialized engines of an export folder, run with PyTorch CUDA tensors as buffers.

Everything TensorRT-specific is imported lazily: this module imports without tensorrt, torch or CUDA, so
`tensorrt_unavailable` can explain on any machine why the backend cannot run.

Data path (no pycuda): the host batch is staged once in pinned memory, then split into chunks of the
engine's optimisation-profile `opt` batch. Each chunk's host->device copy is issued on a copy stream and
the engine runs on a compute stream that waits on a per-chunk event, so the copy of chunk i+1 overlaps the
execution of chunk i. Outputs stay on the device until one device->host copy at the end.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dgl_deploy.errors import DGLError
from dgl_deploy.runtime.manifest import EngineEntry, Manifest, load_manifest, verified_file

INSTALL_HINT = "pip install 'dgl-deploy[gpu]'"


def current_gpu() -> tuple[str, str] | None:
    """(GPU name, compute capability "major.minor") of CUDA device 0, or None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(0)
    return torch.cuda.get_device_name(0), f"{major}.{minor}"


def engine_mismatch(entry: EngineEntry, gpu: tuple[str, str], tensorrt_version: str) -> str | None:
    """Why an engine cannot run here (other GPU / compute capability / TensorRT version), or None."""
    name, capability = gpu
    if entry.compute_capability != capability or entry.gpu_name != name:
        return (f"{entry.file} was built for {entry.gpu_name} (sm {entry.compute_capability}), this machine has "
                f"{name} (sm {capability})")
    if entry.tensorrt_version != tensorrt_version:
        return f"{entry.file} was built with TensorRT {entry.tensorrt_version}, this is TensorRT {tensorrt_version}"
    return None


def stale_onnx(folder: Path, manifest: Manifest, entry: EngineEntry) -> str | None:
    """Why an engine no longer matches its source graph in the manifest (re-exported ONNX), or None."""
    graphs = {g.file: g.sha256 for g in manifest.graphs}
    if graphs.get(entry.onnx_file) != entry.onnx_sha256:
        return f"{entry.file} was built from another {entry.onnx_file} than the one in {folder}"
    return None


def tensorrt_unavailable(folder: Path, manifest: Manifest) -> str | None:
    """None when the export's engines can run here, else the reason (cheapest checks first)."""
    if not manifest.engines:
        return f"{folder} has no TensorRT engines (build them with `dgl export MODEL --out {folder} --trt`)"
    if importlib.util.find_spec("tensorrt") is None:
        return f"the `tensorrt` package is not installed: {INSTALL_HINT}"
    gpu = current_gpu()
    if gpu is None:
        return "no CUDA GPU is available (torch.cuda.is_available() is False)"
    import tensorrt as trt

    for entry in manifest.engines:
        reason = engine_mismatch(entry, gpu, trt.__version__) or stale_onnx(folder, manifest, entry)
        if reason:
            return f"{reason}; rebuild with `dgl export MODEL --out {folder} --trt --rebuild`"
    return None


class EngineRunner:
    """One deserialized engine with its execution context, single input and single output."""

    def __init__(self, path: Path, runtime: Any) -> None:
        import tensorrt as trt

        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise DGLError(f"{path}: TensorRT cannot deserialize the engine (corrupt, or built for another setup)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output = next(n for n in names if n != self.input)
        _, opt, biggest = self.engine.get_tensor_profile_shape(self.input, 0)
        self.chunk, self.max_batch = int(opt[0]), int(biggest[0])

    def run(self, host: np.ndarray) -> np.ndarray:
        """(B, ...) host batch -> (B, E) float32, pipelined in profile-opt chunks (see module docstring)."""
        import torch

        device = torch.device("cuda")
        copy_stream, compute_stream = torch.cuda.Stream(), torch.cuda.Stream()
        staged = torch.from_numpy(np.ascontiguousarray(host)).pin_memory()  # (B, ...) pinned
        outputs = []
        for chunk in staged.split(self.chunk):
            with torch.cuda.stream(copy_stream):
                dev_in = chunk.to(device, non_blocking=True)
                ready = torch.cuda.Event()
                ready.record(copy_stream)
            compute_stream.wait_event(ready)
            dev_in.record_stream(compute_stream)  # freed only after the engine has read it
            with torch.cuda.stream(compute_stream):
                dev_out = torch.empty(self._output_shape(chunk.shape), dtype=torch.float32, device=device)
            self.context.set_input_shape(self.input, tuple(chunk.shape))
            self.context.set_tensor_address(self.input, dev_in.data_ptr())
            self.context.set_tensor_address(self.output, dev_out.data_ptr())
            if not self.context.execute_async_v3(compute_stream.cuda_stream):
                raise DGLError("TensorRT failed to enqueue the engine")
            outputs.append(dev_out)
        compute_stream.synchronize()
        return torch.cat(outputs).cpu().numpy()  # (B, E)

    def _output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        return (int(input_shape[0]), int(self.engine.get_tensor_shape(self.output)[-1]))


class TensorRTEncoder:
    """Encoder API over an export folder's TensorRT engines (see backends.base.Encoder)."""

    backend = "tensorrt"

    def __init__(self, folder: Path | str) -> None:
        import tensorrt as trt

        self.folder = Path(folder)
        self.manifest = m = load_manifest(self.folder)
        reason = tensorrt_unavailable(self.folder, m)
        if reason:
            raise DGLError(f"tensorrt backend: {reason}")
        self.fingerprint, self.frames, self.image_size = m.fingerprint, m.frames, m.image_size
        self.max_words, self.embed_dim = m.max_words, m.embed_dim
        self.precision = m.engines[0].precision
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engines: dict[str, EngineRunner] = {}
        self._tokens: Any = None  # the onnxruntime encoder's tokenizer (shared, torch-free)

    def engine(self, role: str) -> EngineRunner:
        """The verified engine of tower `role`, deserialized on first use."""
        if role not in self._engines:
            entry = next((e for e in self.manifest.engines if e.role == role), None)
            if entry is None:
                raise DGLError(f"{self.folder}: no TensorRT engine for the {role} tower; rebuild with --trt")
            path = verified_file(self.folder, entry.file, entry.sha256)
            self._engines[role] = EngineRunner(path, self._runtime)
        return self._engines[role]

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        if self._tokens is None:
            from dgl_deploy.runtime.backends.onnxruntime import OnnxEncoder

            self._tokens = OnnxEncoder(self.folder, device="cpu", precision="fp32")
        return self.engine("text").run(self._tokens.tokenize(texts))

    def encode_videos(self, frames: np.ndarray) -> np.ndarray:
        want = (self.frames, self.image_size, self.image_size, 3)
        if frames.dtype != np.uint8 or frames.ndim != 5 or tuple(frames.shape[1:]) != want:
            raise DGLError(f"video frames must be uint8 (B, {', '.join(map(str, want))}), got {frames.dtype} "
                           f"{frames.shape}")
        return self.engine("video").run(frames)

    def describe(self) -> str:
        entry = self.manifest.engines[0]
        return f"tensorrt ({entry.gpu_name}, TensorRT {entry.tensorrt_version}, {self.precision})"


__all__ = ["TensorRTEncoder", "tensorrt_unavailable", "engine_mismatch", "stale_onnx", "current_gpu"]
