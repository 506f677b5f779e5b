"""`dgl embed --ray ADDRESS`: the `dgl embed` job on a Ray cluster (Ray Data).

file list -> decode on CPU tasks (`video.read_frames`, per-file time limit; with segments, every window of the
file from one `WindowDecodeProcess` pass, one row per window) -> encode on an actor pool (each actor opens the
model once) -> the driver writes each finished chunk to `<out>.parts/` as soon as all its videos (all their
windows) are back. Chunks, the job file, resume checks and the final merge are those of
`dgl_deploy.retrieval.embed`, so the output layout (ids order, manifest, errors file) is the single-machine one,
a killed job resumes from its finished chunks, a job may even be resumed by the other runner, and the
same output lock, stale-chunk checks and NaN/inf refusal apply.
Rows match the single-machine ones to float rounding (batches are formed differently). Each decoded row carries
the Ray node that decoded it; the job logs how many files each node decoded (logger `dgl_deploy.retrieval.ray_embed`,
INFO), which shows a multi-node cluster was used.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from dgl_deploy.data.windows import Segmentation
from dgl_deploy.errors import DGLError
from dgl_deploy.extras import install_hint
from dgl_deploy.retrieval.embed import (
    EmbedJob,
    EmbedResult,
    EmbedSettings,
    Reporter,
    chunk_file,
    run_job,
    start_chunks,
    write_chunk,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RaySettings:
    """Where and how wide to run."""

    address: str = "local"  # "local": start Ray on this machine; "auto": the running cluster; or ray://host:port
    num_cpus: int | None = None  # CPUs of a local cluster (default: all)
    encoders: int = 1  # encoder actors (each holds one model)
    backend: str = "auto"
    precision: str = "auto"  # export graph precision (see backends.select.open_encoder)
    device: str = "auto"


def embed_videos_ray(source: Path | str, out: Path | str, model: Path | str, settings: EmbedSettings = EmbedSettings(),
                     ray_settings: RaySettings = RaySettings(), *, update: bool = False, overwrite: bool = False,
                     prune: bool = False, reporter: Reporter | None = None) -> EmbedResult:
    """Embed every video named by `source` into the set at `out` on Ray; see the module docstring."""
    from dgl_deploy.runtime.backends.select import open_choice, resolve

    _require_ray()
    choice = resolve(model, backend=ray_settings.backend, device=ray_settings.device, precision=ray_settings.precision)
    # the actors open exactly what is recorded: auto resolved here once, from the model files and this host
    resolved = replace(ray_settings, backend=choice.backend, device=str(choice.device), precision=choice.precision)
    encoder = open_choice(choice)  # the set's model facts (no graph is loaded here for an export)

    def runner(job: EmbedJob, progress: Reporter) -> None:
        _run_chunks(job, str(Path(model).resolve()), encoder, settings, resolved, progress)

    return run_job(source, out, encoder, settings, runner, update=update, overwrite=overwrite, prune=prune,
                   model=str(model), backend=f"ray: {encoder.describe()}", reporter=reporter)


def _init_args(settings: RaySettings) -> dict[str, Any]:
    common = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if settings.address == "local":
        return {**common, "num_cpus": settings.num_cpus}
    return {**common, "address": settings.address}


def _run_chunks(job: EmbedJob, model: str, encoder: Any, settings: EmbedSettings, ray_settings: RaySettings,
                reporter: Reporter) -> None:
    """Stream the pending chunks through Ray Data; write each chunk once all its videos are back."""
    import ray.data

    chunks, pending = start_chunks(job, settings, reporter)
    todo = job.todo
    items = [{"position": i, "path": str(todo[i].path)} for k in pending for i in chunks[k]]
    if not items:
        return
    if not ray.is_initialized():
        ray.init(**_init_args(ray_settings))
    decode = _Decode(encoder.frames, encoder.image_size, settings.timeout, encoder.frame_sampling, settings.segments)
    dataset = (ray.data.from_items(items, override_num_blocks=len(items))
               .flat_map(decode, num_cpus=1)
               .map_batches(_Encode, fn_constructor_kwargs={"model": model, "backend": ray_settings.backend,
                                                            "precision": ray_settings.precision,
                                                            "device": ray_settings.device},
                            batch_size=settings.batch_size, num_cpus=1,
                            compute=ray.data.ActorPoolStrategy(size=ray_settings.encoders)))
    videos = {k: _Chunk() for k in pending}
    decoded_on: dict[int, str] = {}  # file position -> the Ray node that decoded it
    for row in dataset.iter_rows():
        position = int(row["position"])
        decoded_on[position] = str(row["node"])
        k = position // settings.chunk_size
        videos[k].add(position, row)
        if videos[k].complete(len(chunks[k])):
            rows, ids, spans, failures = videos.pop(k).result(todo, encoder.embed_dim)
            reporter.advance(*write_chunk(chunk_file(job.paths.parts, k), rows, ids, failures, settings.fp16,
                                          spans if settings.segments else None, precision=job.result.precision))
    nodes = Counter(decoded_on.values())
    log.info("ray: %d files decoded on %d nodes (%s)", len(decoded_on), len(nodes),
             ", ".join(f"{node}: {count}" for node, count in sorted(nodes.items())))


@dataclass
class _Chunk:
    """The rows of one chunk as they come back, in any order: a video is complete when all its windows are back,
    or its failure and every window decoded before it."""

    windows: dict[int, dict[int, tuple[np.ndarray, float, float]]] = field(default_factory=dict)  # video -> window
    expected: dict[int, int] = field(default_factory=dict)  # video -> window rows to wait for
    errors: dict[int, str] = field(default_factory=dict)

    def add(self, position: int, row: dict[str, Any]) -> None:
        if row["error"]:
            self.errors[position] = str(row["error"])
            self.expected[position] = int(row["windows"])  # the windows sent before the failure
        else:
            self.windows.setdefault(position, {})[int(row["window"])] = (row["vector"], row["start"], row["end"])
            self.expected.setdefault(position, int(row["windows"]))

    def complete(self, videos: int) -> bool:
        done = [p for p, count in self.expected.items() if len(self.windows.get(p, {})) == count]
        return len(done) == videos

    def result(self, todo: list, dim: int) -> tuple[np.ndarray, list[str], np.ndarray, list[tuple[str, str]]]:
        """(rows (R, E), ids, spans (R, 2), failures) in video then window order."""
        kept = [(p, w) for p in sorted(self.windows) if p not in self.errors for w in sorted(self.windows[p])]
        rows = np.stack([self.windows[p][w][0] for p, w in kept]) if kept else np.zeros((0, dim), np.float32)
        spans = np.array([self.windows[p][w][1:] for p, w in kept], np.float64).reshape(-1, 2)
        failures = [(todo[p].id, self.errors[p]) for p in sorted(self.errors)]
        return rows, [todo[p].id for p, _ in kept], spans, failures


@dataclass(frozen=True)
class _Decode:
    """Ray Data flat map: one file -> one row per window (one for the whole file without `segments`), each
    with the file's window count; a failure ends the file with an error row (frames all zero) that counts the
    windows sent before it."""

    frames: int
    image_size: int
    timeout: float
    sampling: str  # frames of a whole file (`data.sampling`); windows are sampled uniformly
    segments: Segmentation | None = None

    def __call__(self, row: dict[str, Any]) -> Iterator[dict[str, Any]]:
        from dgl_deploy.data.frame_request import FrameRequest
        from dgl_deploy.data.video import VideoError, read_frames

        sent = 0
        try:
            if self.segments is None:
                stack = read_frames(FrameRequest(row["path"], self.frames, self.image_size, sampling=self.sampling),
                                    self.timeout)
                yield self._row(row, 0, 1, (np.nan, np.nan), stack)
                return
            for stacks in _window_decoder().stream(row["path"], self.segments, self.frames, self.image_size,
                                                   self.timeout):
                for g, frames in enumerate(stacks.frames):
                    yield self._row(row, stacks.first + g, stacks.total, stacks.spans[g], frames)
                    sent += 1
        except VideoError as exc:
            blank = np.zeros((self.frames, self.image_size, self.image_size, 3), np.uint8)
            yield self._row(row, -1, sent, (np.nan, np.nan), blank, exc.reason)

    @staticmethod
    def _row(row: dict[str, Any], window: int, windows: int, span: Any, frames: np.ndarray,
             error: str = "") -> dict[str, Any]:
        import ray

        return {"position": row["position"], "window": window, "windows": windows, "start": float(span[0]),
                "end": float(span[1]), "frames": frames, "error": error,
                "node": ray.get_runtime_context().get_node_id()}


_decoder: Any = None


def _window_decoder() -> Any:
    """This Ray worker's window decoding subprocess (started on first use)."""
    global _decoder
    from dgl_deploy.data.window_decode import WindowDecodeProcess

    if _decoder is None:
        _decoder = WindowDecodeProcess()
    return _decoder


class _Encode:
    """Ray Data actor: opens the model once, encodes the decoded videos of each batch."""

    def __init__(self, model: str, backend: str, device: str, precision: str = "auto") -> None:
        from dgl_deploy.runtime.backends.select import open_encoder

        self.encoder = open_encoder(model, backend=backend, device=device, precision=precision, log=None)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = batch["error"] == ""
        vectors = np.zeros((len(ok), self.encoder.embed_dim), np.float32)
        if ok.any():
            vectors[ok] = self.encoder.encode_videos(np.asarray(batch["frames"])[ok])
        return {**{key: batch[key] for key in ("position", "window", "windows", "start", "end", "error", "node")},
                "vector": vectors}


def _require_ray() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        raise DGLError(install_hint("ray")) from None


__all__ = ["RaySettings", "embed_videos_ray"]
