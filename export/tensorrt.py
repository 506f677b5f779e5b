"""`dgl export MODEL --trt`: TensorRT engines from an export folder's fp32 ONNX graphs.

TensorRT 10 Python API: Builder + OnnxParser, one optimisation profile over the dynamic batch
(min/opt/max), fp16 by default with normalisation/softmax/reduction layers pinned to fp32
(OBEY_PRECISION_CONSTRAINTS), a workspace limit, a timing cache file reused across builds, and build
progress through an IProgressMonitor. Each engine is parity-checked against onnxruntime fp32 on CPU
before the manifest records it (with GPU name, compute capability, TensorRT version and the ONNX
checksum, which the backend checks before running it). `tensorrt` is imported lazily.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from dgl_deploy.errors import DGLError
from dgl_deploy.export.parity import Sizes, compare, sample_input
from dgl_deploy.extras import install_command, install_hint
from dgl_deploy.files import atomic_path
from dgl_deploy.runtime.backends.onnxruntime import make_session
from dgl_deploy.runtime.backends.select import Log
from dgl_deploy.runtime.backends.tensorrt import EngineRunner, current_gpu, engine_mismatch, stale_onnx
from dgl_deploy.runtime.manifest import EngineEntry, Manifest, load_manifest, sha256_file, verified_file, write_manifest

ENGINE_PRECISIONS = ("fp16", "fp32", "int8", "fp8")
MIN_COSINE = {"fp32": 0.9999, "fp16": 0.999, "int8": 0.99, "fp8": 0.99}  # vs onnxruntime fp32
DEFAULT_TIMING_CACHE = Path.home() / ".cache" / "dgl-deploy" / "tensorrt_timing.cache"


@dataclass(frozen=True)
class Profile:
    """Batch sizes of one optimisation profile: TensorRT tunes for `opt` and accepts min..max."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise DGLError(f"invalid TensorRT batch profile {self.min}/{self.opt}/{self.max}: need 1 <= min <= opt "
                           "<= max")

    @classmethod
    def parse(cls, text: str) -> Profile:
        """"1,32,128" or "1/32/128" -> Profile(1, 32, 128)."""
        parts = text.replace("/", ",").split(",")
        try:
            low, opt, high = (int(p) for p in parts)
        except ValueError:
            raise DGLError(f"invalid TensorRT batch profile {text!r}: expected MIN,OPT,MAX (e.g. 1,32,128)") from None
        return cls(low, opt, high)

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.min, self.opt, self.max)


@dataclass(frozen=True)
class TrtSettings:
    """Engine build settings (defaults: fp16, video batches 1/32/128, text batches 1/256/1024)."""

    precision: str = "fp16"
    profiles: dict[str, Profile] = field(default_factory=lambda: {"video": Profile(1, 32, 128),
                                                                  "text": Profile(1, 256, 1024)})
    workspace_gib: float = 4.0
    timing_cache: Path = DEFAULT_TIMING_CACHE
    rebuild: bool = False

    def __post_init__(self) -> None:
        if self.precision not in ENGINE_PRECISIONS:
            raise DGLError(f"unknown TensorRT precision {self.precision!r}: use one of {', '.join(ENGINE_PRECISIONS)}")
        if self.workspace_gib <= 0:
            raise DGLError(f"TensorRT workspace must be > 0 GiB, got {self.workspace_gib}")


def import_tensorrt() -> Any:
    """The tensorrt module, or a DGLError saying how to install it."""
    try:
        import tensorrt as trt
    except ImportError:
        raise DGLError(f"--trt needs TensorRT 10.x: {install_hint('tensorrt')}") from None
    return trt


def build_engines(folder: Path | str, settings: TrtSettings = TrtSettings(), log: Log = print) -> Manifest:
    """Build (or keep, when current) the text and video engines of export `folder`; returns the new manifest.
    Engines built for another GPU / TensorRT / ONNX are refused unless `settings.rebuild`."""
    folder = Path(folder)
    trt = import_tensorrt()
    gpu = current_gpu()
    if gpu is None:
        raise DGLError(f"--trt needs a CUDA GPU and cuda-python ({install_command('gpu')}); none was found")
    manifest = load_manifest(folder)
    if manifest.engines and not settings.rebuild:
        problems = [engine_mismatch(e, gpu, trt.__version__) or stale_onnx(folder, manifest, e)
                    for e in manifest.engines]
        if not any(problems):
            log(f"{folder}: TensorRT engines are up to date (pass --rebuild to build them again)")
            return manifest
        raise DGLError(f"{next(p for p in problems if p)}; pass --rebuild to replace the engines")
    engines = tuple(_build_checked(trt, folder, manifest, role, settings, gpu, log) for role in ("text", "video"))
    updated = manifest.with_engines(engines)
    write_manifest(folder, updated)
    return updated


def _build_checked(trt: Any, folder: Path, manifest: Manifest, role: str, settings: TrtSettings,
                   gpu: tuple[str, str], log: Log) -> EngineEntry:
    """Build one engine, check it against onnxruntime, then record it (the file is removed on failure)."""
    graph = manifest.graph(role, "fp32")
    onnx_path = verified_file(folder, graph.file, graph.sha256)
    profile = settings.profiles[role]
    spec = manifest.inputs[role]
    dims = tuple(manifest.max_words if dim == "W" else dim for dim in spec.shape[1:])  # engines take whole ids
    shapes = tuple((batch, *dims) for batch in profile.as_tuple())
    log(f"{role}: building TensorRT {settings.precision} engine, batch {profile.min}/{profile.opt}/{profile.max}")
    plan = build_engine(trt, onnx_path, spec.name, shapes, settings, log)
    path = folder / f"{graph.file.removesuffix('.onnx')}.{settings.precision}.plan"
    with atomic_path(path) as tmp:
        tmp.write_bytes(plan)
    try:
        parity = engine_parity(trt, path, onnx_path, manifest, role, profile, settings.precision)
    except DGLError:
        path.unlink(missing_ok=True)
        raise
    log(f"{role}: engine min cosine {parity['min_cosine']:.6f} vs onnxruntime fp32")
    return EngineEntry(role=role, precision=settings.precision, file=path.name, sha256=sha256_file(path),
                       onnx_file=graph.file, onnx_sha256=graph.sha256, gpu_name=gpu[0], compute_capability=gpu[1],
                       tensorrt_version=trt.__version__, profile=profile.as_tuple(), parity=parity)


def build_engine(trt: Any, onnx_path: Path, input_name: str, shapes: tuple[tuple[int, ...], ...],
                 settings: TrtSettings, log: Log) -> bytes:
    """Serialized engine of one ONNX graph; `shapes` = min/opt/max input shapes of the dynamic batch."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise DGLError(f"{onnx_path}: TensorRT cannot parse the graph ({errors[0] if errors else 'unknown error'})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(settings.workspace_gib * (1 << 30)))
    apply_precision(trt, network, config, settings.precision)
    profile = builder.create_optimization_profile()
    profile.set_shape(input_name, *shapes)
    config.add_optimization_profile(profile)
    cache = _load_timing_cache(config, settings.timing_cache)
    monitor = progress_monitor(trt, log)
    if monitor is not None:
        config.progress_monitor = monitor
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise DGLError(f"{onnx_path}: TensorRT engine build failed (see the TensorRT messages above)")
    _save_timing_cache(cache, settings.timing_cache)
    return bytes(plan)


def apply_precision(trt: Any, network: Any, config: Any, precision: str) -> None:
    """Builder flags for `precision`; reduced precisions keep normalisation, softmax and reductions in fp32.
    int8/fp8 only take effect on layers with explicit Q/DQ scales (no calibration here); the rest is fp16."""
    if precision == "fp32":
        return
    config.set_flag(trt.BuilderFlag.FP16)
    extra = {"int8": "INT8", "fp8": "FP8"}.get(precision)
    if extra:
        if not hasattr(trt.BuilderFlag, extra):
            raise DGLError(f"this TensorRT ({trt.__version__}) has no {precision} support")
        config.set_flag(getattr(trt.BuilderFlag, extra))
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    keep = {trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX, trt.LayerType.REDUCE}
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.type in keep:
            layer.precision = trt.float32
            for out in range(layer.num_outputs):
                layer.set_output_type(out, trt.float32)


def progress_monitor(trt: Any, log: Log) -> Any:
    """An IProgressMonitor that logs top-level build phases (None where this TensorRT has none)."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class _Monitor(trt.IProgressMonitor):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            if parent_phase is None:
                log(f"  {phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # never cancel

        def phase_finish(self, phase_name: str) -> None:
            pass

    return _Monitor()


def _load_timing_cache(config: Any, path: Path) -> Any:
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def _save_timing_cache(cache: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(bytes(cache.serialize()))


def engine_parity(trt: Any, engine_path: Path, onnx_path: Path, manifest: Manifest, role: str, profile: Profile,
                  precision: str) -> dict[str, float]:
    """Smallest cosine between the engine and onnxruntime fp32 (CPU) over batches min, a ragged size and opt;
    DGLError below MIN_COSINE[precision]."""
    engine = EngineRunner(engine_path, trt.Runtime(trt.Logger(trt.Logger.WARNING)))
    session = make_session(onnx_path)
    sizes = Sizes(manifest.vocab_size, manifest.max_words, manifest.frames, manifest.image_size)
    rng = np.random.default_rng(0)
    worst = 1.0
    for batch in sorted({profile.min, min(profile.max, 3), min(profile.opt, 16)}):
        array = sample_input(sizes, role, batch, rng)
        reference = session.run(None, {session.get_inputs()[0].name: array})[0]
        worst = min(worst, compare(reference, engine.run(array))["min_cosine"])
    if worst < MIN_COSINE[precision]:
        raise DGLError(f"{engine_path.name}: {precision} engine cosine {worst:.6f} < {MIN_COSINE[precision]} vs "
                       "onnxruntime fp32; build failed, engine removed")
    return {"min_cosine": worst}


def with_profile(settings: TrtSettings, role: str, profile: Profile | None) -> TrtSettings:
    """`settings` with one role's profile replaced (None keeps the default)."""
    if profile is None:
        return settings
    return replace(settings, profiles={**settings.profiles, role: profile})
