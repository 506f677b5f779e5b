"""`dgl embed --ray ADDRESS`: the `dgl embed` job on a Ray cluster (Ray Data).

file list -> decode on CPU tasks (`video.read_frames`, per-file time limit; with segments, every window of the
file from one `WindowDecodeProcess` pass; `video_rows.rows_of`: one row per window) -> encode on an actor pool
(each actor opens the model once) -> the driver puts each video's rows back together as they come (in any order,
`video_rows.RowCollector`) and writes each chunk to `<out>.parts/` as soon as all its videos are back. Only where the
rows come from differs from the single-machine job: planning, chunks, the job file, resume checks and the final
merge are `embed.run_job`'s, so the output layout (ids order, manifest, errors file) is the single-machine one, a
killed job resumes from its finished chunks, a job may even be resumed by the other runner, and the same output
lock, stale-chunk checks and NaN/inf refusal apply.
Rows match the single-machine ones to float rounding (batches are formed differently). Each decoded row carries
the Ray node that decoded it; the job logs how many files each node decoded (logger `dgl_deploy.retrieval.ray_embed`,
INFO), which shows a multi-node cluster was used.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dgl_deploy.data.windows import Segmentation
from dgl_deploy.errors import DGLError
from dgl_deploy.extras import install_hint
from dgl_deploy.retrieval.embed import run_job
from dgl_deploy.retrieval.embed_job import EmbedResult, Reporter, RowSource
from dgl_deploy.retrieval.embed_settings import EmbedSettings
from dgl_deploy.retrieval.video_rows import RowCollector, RowPlace, VideoRows, rows_of

if TYPE_CHECKING:
    from dgl_deploy.data.loader import DecodedVideo, VideoFailure, WindowGroup

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

    rows = ray_rows(str(Path(model).resolve()), encoder, settings, resolved)
    return run_job(source, out, encoder, settings, rows, update=update, overwrite=overwrite, prune=prune,
                   model=str(model), backend=f"ray: {encoder.describe()}", reporter=reporter)


def _init_args(settings: RaySettings) -> dict[str, Any]:
    common = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if settings.address == "local":
        return {**common, "num_cpus": settings.num_cpus}
    return {**common, "address": settings.address}


def ray_rows(model: str, encoder: Any, settings: EmbedSettings, ray_settings: RaySettings) -> RowSource:
    """Rows decoded on Ray CPU tasks and encoded on `ray_settings.encoders` actors holding `model` (`encoder`: its
    sizes), back in any order; each video comes out once all its rows are back (`RowCollector`)."""

    def rows(paths: list[Path], ends: Collection[int], result: EmbedResult) -> Iterator[VideoRows | VideoFailure]:
        return _stream(paths, model, encoder, settings, ray_settings)  # batches are Ray's: `ends` is not needed

    return rows


def _stream(paths: list[Path], model: str, encoder: Any, settings: EmbedSettings,
            ray_settings: RaySettings) -> Iterator[VideoRows | VideoFailure]:
    """Stream `paths` through Ray Data: decode tasks, then the encoder actor pool; gather the rows per video."""
    import ray.data

    from dgl_deploy.data.loader import VideoFailure

    if not paths:
        return
    if not ray.is_initialized():
        ray.init(**_init_args(ray_settings))
    decode = _Decode(encoder.frames, encoder.image_size, settings.timeout, encoder.frame_sampling, settings.segments)
    items = [{"index": n, "path": str(path)} for n, path in enumerate(paths)]
    dataset = (ray.data.from_items(items, override_num_blocks=len(items))
               .flat_map(decode, num_cpus=1)
               .map_batches(_Encode, fn_constructor_kwargs={"model": model, "backend": ray_settings.backend,
                                                            "precision": ray_settings.precision,
                                                            "device": ray_settings.device},
                            batch_size=settings.batch_size, num_cpus=1,
                            compute=ray.data.ActorPoolStrategy(size=ray_settings.encoders)))
    collector = RowCollector()
    decoded_on: dict[int, str] = {}  # file index -> the Ray node that decoded it
    for row in dataset.iter_rows():
        index = int(row["index"])
        decoded_on[index] = str(row["node"])
        if row["error"]:  # counts the rows sent before the failure
            collector.fail(VideoFailure(index, paths[index], str(row["error"])), sent=int(row["windows"]))
        else:
            span = (float(row["start"]), float(row["end"])) if settings.segments else None
            collector.add(RowPlace(index, int(row["window"]), int(row["windows"]), span, bool(row["timed"])),
                          np.asarray(row["vector"]))
        yield from collector.finished()
    nodes = Counter(decoded_on.values())
    log.info("ray: %d files decoded on %d nodes (%s)", len(decoded_on), len(nodes),
             ", ".join(f"{node}: {count}" for node, count in sorted(nodes.items())))


@dataclass(frozen=True)
class _Decode:
    """Ray Data flat map: one file -> its rows (`video_rows.rows_of`: one per window, one for the whole file without
    `segments`), each with the file's row count; a failure ends the file with an error row (frames all zero) that
    counts the rows sent before it."""

    frames: int
    image_size: int
    timeout: float
    sampling: str  # frames of a whole file (`data.sampling`); windows are sampled uniformly
    segments: Segmentation | None = None

    def __call__(self, row: dict[str, Any]) -> Iterator[dict[str, Any]]:
        from dgl_deploy.data.video import VideoError

        sent = 0
        try:
            for piece in self._pieces(int(row["index"]), row["path"]):
                for pending in rows_of(piece):
                    yield self._row(pending.place, pending.frames)
                    sent += 1
        except VideoError as exc:
            blank = np.zeros((self.frames, self.image_size, self.image_size, 3), np.uint8)
            yield self._row(RowPlace(int(row["index"]), -1, sent, None), blank, exc.reason)

    def _pieces(self, index: int, path: str) -> Iterator[WindowGroup | DecodedVideo]:
        """The file decoded: whole, or window group by window group."""
        from dgl_deploy.data.frame_request import FrameRequest
        from dgl_deploy.data.loader import DecodedVideo, WindowGroup
        from dgl_deploy.data.video import read_frames

        if self.segments is None:
            yield DecodedVideo(index, read_frames(FrameRequest(path, self.frames, self.image_size,
                                                               sampling=self.sampling), self.timeout))
            return
        for stacks in _window_decoder().stream(path, self.segments, self.frames, self.image_size, self.timeout):
            yield WindowGroup(index, stacks)

    @staticmethod
    def _row(place: RowPlace, frames: np.ndarray, error: str = "") -> dict[str, Any]:
        """A Ray Data row: the frames with their place (`windows`: the video's rows, or those sent before an error)."""
        import ray

        start, end = place.span or (np.nan, np.nan)
        return {"index": place.index, "window": place.window, "windows": place.total, "start": float(start),
                "end": float(end), "timed": place.timed, "frames": frames, "error": error,
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
        return {**{key: batch[key] for key in ("index", "window", "windows", "start", "end", "timed", "error", "node")},
                "vector": vectors}


def _require_ray() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        raise DGLError(install_hint("ray")) from None


__all__ = ["RaySettings", "embed_videos_ray"]
