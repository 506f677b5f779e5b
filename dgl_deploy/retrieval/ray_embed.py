"""`dgl embed --ray ADDRESS`: the `dgl embed` job on a Ray cluster (Ray Data).

file list -> decode on CPU tasks (`video.read_frames`, per-file time limit) -> encode on an actor pool
(each actor opens the model once) -> the driver writes each finished chunk to `<out>.parts/` as soon as
all its videos are back. Chunks, the job file, resume checks and the final merge are those of
`dgl_deploy.retrieval.embed`, so the output layout (ids order, manifest, errors file) is the single-machine one,
a killed job resumes from its finished chunks, a job may even be resumed by the other runner, and the
same output lock, stale-chunk checks and NaN/inf refusal apply.
Rows match the single-machine ones to float rounding (batches are formed differently).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dgl_deploy.errors import DGLError
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

INSTALL_HINT = "Ray is not installed: pip install 'dgl-deploy[ray]'"


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
    from dgl_deploy.runtime.backends.select import open_encoder

    _require_ray()
    encoder = open_encoder(model, backend=ray_settings.backend, device=ray_settings.device,
                           precision=ray_settings.precision, log=None)

    def runner(job: EmbedJob, progress: Reporter) -> None:
        _run_chunks(job, str(Path(model).resolve()), encoder, settings, ray_settings, progress)

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
    decode = _Decode(encoder.frames, encoder.image_size, settings.timeout)
    dataset = (ray.data.from_items(items, override_num_blocks=len(items))
               .map(decode, num_cpus=1)
               .map_batches(_Encode, fn_constructor_kwargs={"model": model, "backend": ray_settings.backend,
                                                            "precision": ray_settings.precision,
                                                            "device": ray_settings.device},
                            batch_size=settings.batch_size, num_cpus=1,
                            compute=ray.data.ActorPoolStrategy(size=ray_settings.encoders)))
    waiting: dict[int, dict[int, tuple[np.ndarray, str]]] = {}  # chunk -> position -> (vector, error)
    for row in dataset.iter_rows():
        position = int(row["position"])
        k = position // settings.chunk_size
        waiting.setdefault(k, {})[position] = (row["vector"], str(row["error"]))
        if len(waiting[k]) == len(chunks[k]):
            done = sorted(waiting.pop(k).items())
            rows = [vector for _, (vector, error) in done if not error]
            ids = [todo[p].id for p, (_, error) in done if not error]
            failures = [(todo[p].id, error) for p, (_, error) in done if error]
            stacked = np.stack(rows) if rows else np.zeros((0, encoder.embed_dim), np.float32)
            reporter.advance(*write_chunk(chunk_file(job.paths.parts, k), stacked, ids, failures, settings.fp16))


@dataclass(frozen=True)
class _Decode:
    """Ray Data map: one file -> its frames, or the reason it failed (frames then all zero)."""

    frames: int
    image_size: int
    timeout: float

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        from dgl_deploy.data.video import VideoError, read_frames

        try:
            stack, error = read_frames(row["path"], self.frames, self.image_size, timeout=self.timeout), ""
        except VideoError as exc:
            stack, error = np.zeros((self.frames, self.image_size, self.image_size, 3), np.uint8), exc.reason
        return {"position": row["position"], "frames": stack, "error": error}


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
        return {"position": batch["position"], "error": batch["error"], "vector": vectors}


def _require_ray() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        raise DGLError(INSTALL_HINT) from None


__all__ = ["RaySettings", "embed_videos_ray"]
