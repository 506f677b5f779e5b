"""The ONNX Runtime backend: an export folder's graphs on TensorRT EP / CUDA / CPU.

Imports neither torch nor open_clip (query start-up): the text path uses the torch-free BPE tokenizer
saved in the export folder. Opening an export checks the manifest and both graphs' declared input/output
shapes against it (read from the files, cheap), so sizes that disagree with the graphs fail at once, before
any video is decoded. Sessions are created on first use per tower, after the checksum check, so a text-only
consumer never loads (or hashes) the video graph.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from dgl_deploy.errors import DGLError
from dgl_deploy.runtime.backends.base import PrecisionPick, check_frames, used_words
from dgl_deploy.runtime.device import Device, parse_device, resolved_device
from dgl_deploy.runtime.host_check import HostCheck, check_host, choose
from dgl_deploy.runtime.manifest import (
    REDUCED_MIN_COSINE,
    ROLES,
    Manifest,
    check_graph_metadata,
    check_graph_signature,
    load_manifest,
    verified_file,
)

# On CPU the video tower runs one video per run, the cores side by side with one ORT thread each (a thread pool
# over one single-threaded session), instead of one run at a time spread over every core: ORT's int8 ops leave a
# second thread waiting at each op's end, one video per run keeps its activations in cache, and with int8's per-run
# activation scales a video's row does not depend on the batch it came in. A lone video (a query by video) runs
# over every core, unless the single-threaded session is already loaded (a second copy of the graph costs memory);
# texts too. A run's result does not depend on its thread count. GPUs run whole batches. The measurements behind
# this are in docs/backends.md (precision and speed).
CPU_VIDEO_CHUNK = 1
PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = PROVIDER_ORDER[:2]


def physical_cores() -> int:
    """Physical cores available to this process (hyper-threads do not help GEMM-bound inference)."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        try:
            base = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
            cores.add(((base / "physical_package_id").read_text().strip(), (base / "core_id").read_text().strip()))
        except OSError:
            cores.add(("?", str(cpu)))
    return max(1, len(cores))


Provider = tuple[str, dict[str, Any]]  # an onnxruntime execution provider and its options


def providers_for(device: Device | str) -> list[Provider]:
    """ORT providers for `device` (auto, cpu, cuda, cuda:N), fastest first, the GPU ones on CUDA device N;
    DGLError when CUDA is impossible."""
    device = parse_device(device)
    if device.kind == "cpu":
        return [("CPUExecutionProvider", {})]
    gpu = [p for p in GPU_PROVIDERS if p in ort.get_available_providers()]
    if device.kind == "cuda" and not gpu:
        raise DGLError(f"onnxruntime {device} requested but this onnxruntime has no CUDA provider: "
                       "pip install 'dgl-deploy[gpu]' (onnxruntime-gpu) on a machine with an NVIDIA GPU")
    return [(p, {"device_id": device.ordinal}) for p in gpu] + [("CPUExecutionProvider", {})]


def make_session(path: Path | str, providers: Sequence[Provider] = (("CPUExecutionProvider", {}),),
                 cache_dir: Path | None = None, threads: int | None = None) -> ort.InferenceSession:
    """An InferenceSession tuned for throughput: all graph optimisations, `threads` intra-op threads (default one
    per core; 1 for a session whose runs go side by side, `OnnxEncoder.encode_videos`)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or physical_cores()
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only (the TensorRT/CUDA EPs are chatty)
    # no busy-waiting between runs: spinning ORT threads starve the numpy search (and the decoders) that
    # run between encoder calls
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # no memory pattern: it plans one more large block per batch shape next to what the first run left, so a
    # segmented embed's peak memory grew with the file's length; without it the peak stays flat at the same speed
    options.enable_mem_pattern = False
    try:
        return ort.InferenceSession(str(path), options, providers=[_provider_entry(p, cache_dir) for p in providers])
    except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, NotImplemented)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DGLError(f"{path}: onnxruntime cannot load the graph ({first[:200]})") from None


def _provider_entry(provider: Provider, cache_dir: Path | None) -> Provider:
    name, options = provider
    if name == "TensorrtExecutionProvider" and cache_dir is not None:
        return (name, {**options, "trt_fp16_enable": True, "trt_engine_cache_enable": True,
                       "trt_engine_cache_path": str(cache_dir), "trt_timing_cache_enable": True})
    return provider


def pick_precision(folder: Path, manifest: Manifest, gpu: bool, asked: str, check: bool = True,
                   strict: bool = False) -> PrecisionPick:
    """The graphs' precision to run for `asked`. auto on CPU: the fastest of int8 and fp32 whose parity holds on
    this host (`host_check`: the export's probe batch run here, cached), or, for exports without a probe, int8
    where the export's recorded parity held; on a GPU provider (`gpu`) fp16 where the export's parity held; else
    fp32. An explicit precision must be in the export; a reduced one whose parity misses on this host warns
    (`PrecisionPick.warning`), or with `strict` is refused. `check`: run (or read) the host probe on CPU."""
    m, reduced, host_check, note = manifest, "fp16" if gpu else "int8", None, ""
    probe = partial(_cpu_encoder, folder)
    precision = asked
    if asked == "auto":
        candidates = [p for p in (reduced, "fp32") if p in set(m.precisions("text")) & set(m.precisions("video"))]
        if check and not gpu and len(candidates) > 1:
            host_check = check_host(folder, m, candidates, probe)
        if host_check is not None:
            precision, note = choose(host_check, candidates)
        else:
            precision = reduced if m.parity_held(reduced) else "fp32"
            if reduced in candidates:
                note = (f"auto picked {precision} from the export's recorded {reduced} parity (min cosine "
                        f"{m.worst_cosine(reduced):.5f}, needs {REDUCED_MIN_COSINE})" +
                        ("" if gpu else "; re-export to check it on this host"))
    for role in ROLES:
        m.graph(role, precision)  # raises naming what the export has
    warning = None
    if check and not gpu and precision != "fp32" and host_check is None:
        host_check = check_host(folder, m, [precision], probe)
        if host_check is not None and not host_check.held(precision):
            result = host_check.results[precision]
            problem = (f"{precision} misses parity on this host ({host_check.numerics}: probe min cosine "
                       f"{result.min_cosine:.5f} < {REDUCED_MIN_COSINE} vs fp32)")
            if strict:
                raise DGLError(f"--precision {precision} refused (--strict): {problem}; use --precision auto")
            warning = (f"warning: {problem}: its embeddings do not stand for fp32 ones here "
                       "(--precision auto would pick fp32; --strict refuses)")
    return PrecisionPick(precision, note, warning, host_check)


def _cpu_encoder(folder: Path, precision: str) -> OnnxEncoder:
    """A CPU encoder of `precision` over the export, as the host check runs it (no check of its own)."""
    return OnnxEncoder(folder, device="cpu", precision=PrecisionPick(precision))


class OnnxEncoder:
    """Encoder API over an export folder's ONNX graphs (see backends.base.Encoder)."""

    backend = "onnxruntime"

    def __init__(self, folder: Path | str, device: Device | str = "auto", precision: str | PrecisionPick = "auto",
                 check: bool = True, strict: bool = False) -> None:
        """`precision`: asked (auto, fp32, fp16, int8: `pick_precision` with `check` and `strict`), or already
        picked (`backends.select.resolve`)."""
        self.folder = Path(folder)
        self.manifest: Manifest = load_manifest(self.folder)
        self.providers = providers_for(device)
        self.on_gpu = self.providers[0][0] in GPU_PROVIDERS
        self.device = resolved_device(parse_device(device), self.on_gpu)
        pick = precision if isinstance(precision, PrecisionPick) else \
            pick_precision(self.folder, self.manifest, self.on_gpu, precision, check, strict)
        self.precision = pick.precision
        self.host_check: HostCheck | None = pick.host_check  # the export's precisions measured on this host (CPU)
        self.precision_note = pick.note  # why auto picked the precision it did (one line)
        self.precision_warning = pick.warning  # a forced precision whose parity misses on this host
        for role in ROLES:
            check_graph_signature(self.folder, self.manifest, self.manifest.graph(role, self.precision))
        m = self.manifest
        self.fingerprint, self.frames, self.image_size = m.fingerprint, m.frames, m.image_size
        self.frame_sampling = m.frame_sampling
        self.max_words, self.embed_dim = m.max_words, m.embed_dim
        self._trim_words = m.inputs["text"].shape[1] == "W"  # the text graph takes any length up to max_words
        self._sessions: dict[tuple[str, int | None], ort.InferenceSession] = {}  # by (role, threads)
        self._tokenizer: Any = None
        self._lanes: ThreadPoolExecutor | None = None  # CPU: one lane per core, each a video at a time
        self._lanes_lock = threading.Lock()  # calls may overlap (`video_lanes`): the lanes are made once
        self.video_lanes = 0 if self.on_gpu else physical_cores()

    def close(self) -> None:
        """Stop the CPU video lanes and drop the sessions (opened again on next use)."""
        if self._lanes is not None:
            self._lanes.shutdown()
            self._lanes = None
        self._sessions.clear()

    def session(self, role: str, threads: int | None = None) -> ort.InferenceSession:
        """The verified session of tower `role` ("text" or "video") with `threads` intra-op threads (default one
        per core), created on first use."""
        if (role, threads) not in self._sessions:
            entry = self.manifest.graph(role, self.precision)
            path = verified_file(self.folder, entry.file, entry.sha256)
            session = make_session(path, self.providers, cache_dir=self.folder / ".ort_trt_cache", threads=threads)
            check_graph_metadata(path, session.get_modelmeta().custom_metadata_map, self.manifest)
            self._sessions[role, threads] = session
        return self._sessions[role, threads]

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        """Captions -> (B, W) int64 ids with the export's CLIP BPE vocabulary."""
        if self._tokenizer is None:
            from dgl_deploy.runtime.tokenizer import export_tokenizer

            self._tokenizer = export_tokenizer(self.folder, self.manifest)
        return self._tokenizer(texts)

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        return self.encode_ids(self.tokenize(texts))

    def encode_ids(self, ids: np.ndarray) -> np.ndarray:
        """(B, W) int64 token ids -> (B, E) float32."""
        if ids.ndim != 2 or ids.shape[1] != self.max_words:
            raise DGLError(f"token ids must be (B, {self.max_words}), got {ids.shape}")
        if self._trim_words:
            ids = ids[:, : used_words(ids)]
        return self._run("text", ids.astype(np.int64, copy=False))

    def encode_videos(self, frames: np.ndarray) -> np.ndarray:
        check_frames(frames, self.frames, self.image_size)  # (B, T, H, W, 3) uint8
        if self.on_gpu or (len(frames) == 1 and ("video", 1) not in self._sessions):  # a lone video (CPU_VIDEO_CHUNK)
            return self._run("video", frames)
        with self._lanes_lock:
            if self._lanes is None:
                self.session("video", threads=1)  # created (and verified) once, before the lanes share it
                self._lanes = ThreadPoolExecutor(self.video_lanes, thread_name_prefix="dgl-video")
        chunks = [frames[i:i + CPU_VIDEO_CHUNK] for i in range(0, len(frames), CPU_VIDEO_CHUNK)]
        return np.concatenate(list(self._lanes.map(partial(self._run, "video", threads=1), chunks)))  # (B, E)

    def _run(self, role: str, array: np.ndarray, threads: int | None = None) -> np.ndarray:
        """One batch through a tower; on a GPU provider through IO binding (output stays on the device until
        the one copy back), on CPU a plain run."""
        session = self.session(role, threads)
        array = np.ascontiguousarray(array)
        if not self.on_gpu:
            return session.run(None, {session.get_inputs()[0].name: array})[0]
        binding = session.io_binding()
        binding.bind_cpu_input(session.get_inputs()[0].name, array)
        binding.bind_output(session.get_outputs()[0].name, "cuda", self.device.ordinal)
        session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def describe(self) -> str:
        provider = self.providers[0][0].removesuffix("ExecutionProvider")
        return f"onnxruntime ({provider}{'' if self.device.index is None else f' {self.device}'}, {self.precision})"
