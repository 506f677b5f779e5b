"""The TensorRT backend: serialized engines of an export folder, run with CUDA buffers from cuda-python.

Everything TensorRT- and CUDA-specific is imported lazily: this module imports without tensorrt, cuda-python,
torch or a GPU, so `tensorrt_unavailable` can explain on any machine why the backend cannot run. The backend
needs no torch: device memory, streams and events come from cuda-python's runtime bindings (the `gpu` extra).

Data path: the host batch is page-locked in place (cudaHostRegister), then split into chunks of the engine's
optimisation-profile `opt` batch (`chunk_spans`). Each chunk's host->device copy is issued on a copy stream
into one of two input buffers; the engine runs on a compute stream that waits on the chunk's copy event, so
the copy of chunk i+1 overlaps the execution of chunk i, and a buffer is refilled only after the engine that
read it has finished. Outputs stay on the device until one device->host copy at the end.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dgl_deploy.errors import DGLError
from dgl_deploy.extras import install_hint
from dgl_deploy.runtime.backends.base import check_frames
from dgl_deploy.runtime.device import Device, parse_device, resolved_device
from dgl_deploy.runtime.manifest import EngineEntry, Manifest, load_manifest, verified_file


def _cudart() -> Any:
    """cuda-python's runtime module (new and old package layouts), or None when it is not installed."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def _call(result: Any) -> Any:
    """Unpack a cuda-python call `(err, *values)`: DGLError on a CUDA error, else the value(s)."""
    cudart = _cudart()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != cudart.cudaError_t.cudaSuccess:
        raise DGLError(f"CUDA error: {cudart.cudaGetErrorString(err)[1].decode()}")
    return values[0] if len(values) == 1 else tuple(values) or None


def current_gpu(index: int = 0) -> tuple[str, str] | None:
    """(GPU name, compute capability "major.minor") of CUDA device `index`, or None without cuda-python or that
    GPU."""
    cudart = _cudart()
    if cudart is None:
        return None
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or count <= index:
        return None
    props = _call(cudart.cudaGetDeviceProperties(index))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.rstrip("\x00"), f"{props.major}.{props.minor}"


def chunk_spans(batch: int, chunk: int) -> list[tuple[int, int]]:
    """[start, stop) row ranges of a `batch` cut into pieces of at most `chunk` rows."""
    return [(start, min(start + chunk, batch)) for start in range(0, batch, chunk)]


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


def engine_precision(manifest: Manifest) -> str:
    """The precision the export's engines were built at (`dgl export --trt --trt-precision`; one per build)."""
    return "/".join(sorted({e.precision for e in manifest.engines}))


def precision_refusal(folder: Path, manifest: Manifest, asked: str) -> str | None:
    """Why the export's engines cannot compute at `asked` (they run at the precision they were built at), or None
    (`auto`, the same precision, or no engines). Read from the manifest: no TensorRT needed."""
    built = engine_precision(manifest)
    if asked == "auto" or not manifest.engines or asked == built:
        return None
    files = ", ".join(e.file for e in manifest.engines)
    return (f"{folder}: TensorRT engines {files} were built at {built}, --precision {asked} was asked; use "
            f"--precision {built} (or auto), or rebuild them with `dgl export MODEL --out {folder} --trt "
            f"--trt-precision {asked} --rebuild`")


def tensorrt_unavailable(folder: Path, manifest: Manifest, gpu_index: int = 0) -> str | None:
    """None when the export's engines can run here on CUDA device `gpu_index`, else the reason (cheapest checks
    first)."""
    if not manifest.engines:
        return f"{folder} has no TensorRT engines (build them with `dgl export MODEL --out {folder} --trt`)"
    for module in ("tensorrt", "cuda"):
        if importlib.util.find_spec(module) is None:
            return install_hint(module)
    gpu = current_gpu(gpu_index)
    if gpu is None:
        return f"no CUDA GPU {gpu_index} is available (cudaGetDeviceCount)"
    import tensorrt as trt

    for entry in manifest.engines:
        reason = engine_mismatch(entry, gpu, trt.__version__) or stale_onnx(folder, manifest, entry)
        if reason:
            return f"{reason}; rebuild with `dgl export MODEL --out {folder} --trt --rebuild`"
    return None


class _DeviceBuffer:
    """A cudaMalloc'd block that grows on demand (never shrinks) and is freed with the runner."""

    def __init__(self) -> None:
        self.ptr, self.nbytes = 0, 0

    def at_least(self, nbytes: int) -> int:
        if nbytes > self.nbytes:
            self.free()
            self.ptr, self.nbytes = _call(_cudart().cudaMalloc(nbytes)), nbytes
        return self.ptr

    def free(self) -> None:
        if self.ptr:
            _call(_cudart().cudaFree(self.ptr))
        self.ptr, self.nbytes = 0, 0


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
        self.embed_dim = int(self.engine.get_tensor_shape(self.output)[-1])
        cudart = _cudart()
        self._copy_stream = _call(cudart.cudaStreamCreate())
        self._compute_stream = _call(cudart.cudaStreamCreate())
        flags = cudart.cudaEventDisableTiming
        self._copied = [_call(cudart.cudaEventCreateWithFlags(flags)) for _ in range(2)]  # input buffer i filled
        self._consumed = [_call(cudart.cudaEventCreateWithFlags(flags)) for _ in range(2)]  # engine done with it
        self._inputs = [_DeviceBuffer(), _DeviceBuffer()]  # double buffer
        self._output = _DeviceBuffer()

    def run(self, host: np.ndarray) -> np.ndarray:
        """(B, ...) host batch -> (B, E) float32, pipelined in profile-opt chunks (see module docstring)."""
        cudart = _cudart()
        host = np.ascontiguousarray(host)
        row_bytes = host[0].nbytes if len(host) else 0
        result = np.empty((len(host), self.embed_dim), np.float32)  # (B, E)
        out_ptr = self._output.at_least(max(result.nbytes, 1))
        _call(cudart.cudaHostRegister(host.ctypes.data, max(host.nbytes, 1), cudart.cudaHostRegisterDefault))
        try:
            for i, (start, stop) in enumerate(chunk_spans(len(host), self.chunk)):
                slot = i % 2
                buffer = self._inputs[slot].at_least(self.chunk * row_bytes)
                _call(cudart.cudaStreamWaitEvent(self._copy_stream, self._consumed[slot], 0))
                _call(cudart.cudaMemcpyAsync(buffer, host.ctypes.data + start * row_bytes, (stop - start) * row_bytes,
                                             cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self._copy_stream))
                _call(cudart.cudaEventRecord(self._copied[slot], self._copy_stream))
                _call(cudart.cudaStreamWaitEvent(self._compute_stream, self._copied[slot], 0))
                self.context.set_input_shape(self.input, (stop - start, *host.shape[1:]))
                self.context.set_tensor_address(self.input, buffer)
                self.context.set_tensor_address(self.output, out_ptr + start * self.embed_dim * 4)
                if not self.context.execute_async_v3(int(self._compute_stream)):
                    raise DGLError("TensorRT failed to enqueue the engine")
                _call(cudart.cudaEventRecord(self._consumed[slot], self._compute_stream))
            _call(cudart.cudaMemcpyAsync(result.ctypes.data, out_ptr, result.nbytes,
                                         cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self._compute_stream))
            _call(cudart.cudaStreamSynchronize(self._compute_stream))
        finally:
            _call(cudart.cudaHostUnregister(host.ctypes.data))
        return result

    def __del__(self) -> None:
        for buffer in (*getattr(self, "_inputs", ()), getattr(self, "_output", None)):
            if buffer is not None:
                buffer.free()


class TensorRTEncoder:
    """Encoder API over an export folder's TensorRT engines (see backends.base.Encoder)."""

    backend = "tensorrt"
    host_check = None  # no CPU host probe: the engines' parity was checked when they were built
    video_lanes = 0  # whole batches

    def __init__(self, folder: Path | str, device: Device | str = "cuda", precision: str = "auto") -> None:
        """Engines run at the precision they were built at: `precision` must be auto or that one (DGLError
        otherwise, before TensorRT is imported); `device`: cuda or cuda:N (auto: cuda)."""
        self.folder = Path(folder)
        self.manifest = m = load_manifest(self.folder)
        refusal = precision_refusal(self.folder, m, precision)
        if refusal:
            raise DGLError(refusal)
        asked = parse_device(device)
        if asked.kind == "cpu":
            raise DGLError("tensorrt backend: engines run on CUDA, --device cpu was asked")
        self.device = resolved_device(asked, gpu=True)
        reason = tensorrt_unavailable(self.folder, m, self.device.ordinal)
        if reason:
            raise DGLError(f"tensorrt backend: {reason}")
        import tensorrt as trt

        self.fingerprint, self.frames, self.image_size = m.fingerprint, m.frames, m.image_size
        self.frame_sampling = m.frame_sampling
        self.max_words, self.embed_dim = m.max_words, m.embed_dim
        self.precision = engine_precision(m)
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engines: dict[str, EngineRunner] = {}
        self._tokenizer: Any = None

    def engine(self, role: str) -> EngineRunner:
        """The verified engine of tower `role`, deserialized on first use; this thread's CUDA device set to ours."""
        _call(_cudart().cudaSetDevice(self.device.ordinal))
        if role not in self._engines:
            entry = next((e for e in self.manifest.engines if e.role == role), None)
            if entry is None:
                raise DGLError(f"{self.folder}: no TensorRT engine for the {role} tower; rebuild with --trt")
            path = verified_file(self.folder, entry.file, entry.sha256)
            self._engines[role] = EngineRunner(path, self._runtime)
        return self._engines[role]

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        if self._tokenizer is None:
            from dgl_deploy.runtime.tokenizer import export_tokenizer

            self._tokenizer = export_tokenizer(self.folder, self.manifest)
        return self.engine("text").run(self._tokenizer(texts))

    def encode_videos(self, frames: np.ndarray) -> np.ndarray:
        check_frames(frames, self.frames, self.image_size)
        return self.engine("video").run(frames)

    def describe(self) -> str:
        entry = self.manifest.engines[0]
        return f"tensorrt ({entry.gpu_name} {self.device}, TensorRT {entry.tensorrt_version}, {self.precision})"


__all__ = ["TensorRTEncoder", "tensorrt_unavailable", "engine_mismatch", "stale_onnx", "current_gpu", "engine_precision",
           "precision_refusal"]
