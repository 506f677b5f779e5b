"""`dgl embed`: batch-embed a folder of videos, resumably and crash-safely.

The videos (sorted, see `discover`) are cut into fixed chunks of `chunk_size`. Worker processes decode
ahead of the encoder (a bounded window, `loader.iter_video_batches`); the encoder runs batches that
never straddle a chunk, and every finished chunk is written atomically to `<out>.parts/`. A killed job
rerun with the same command checks the finished chunks against the job (a chunk of other videos is redone,
never merged) and skips them; since chunk boundaries and batches do not depend on where it stopped, the
final files are identical to an uninterrupted run. At the end the set is written as a new generation beside
the old one and switched to by one rename (`store.write_set`: a kill or a full disk leaves the old set
whole), or, by an update that keeps every row, the new rows are appended to the set's files in place, in
proportion to what they add (`store.append_set`, as safe); then the parts are removed. A row the encoder
returns as NaN/inf (or that overflows float16 with `fp16`) is not written: its file is listed as failed, with
the reason.

One writer at a time: a job holds `<out>.lock` (`store.writer_lock`), so a second job on the same output is
refused, naming the first one's pid. A refused job leaves nothing behind, and a job that stops before
finishing any chunk leaves no `<out>.parts/`. A job killed after its switch but before removing its parts
is recognised by the manifest (`job`), and its parts are removed by the next run. Every job first brings the
set's files back to what its manifest records (`store.repair_set`: what an append killed before its switch left
past the count, .npy headers an append killed after its switch did not rewrite).

Without `update`, an existing set made by the same model that already holds every video of the source is
"up to date" (nothing is written: rerunning a finished command is harmless); one that lacks some is refused.
`update=True` embeds only the videos the set does not have and appends them (sorted) after the existing
rows, so existing row numbers stay valid.

Ids and folders: ids are relative to the folder the set was first made from (its source root, recorded in
the manifest both absolute and relative to the set, so a set moved together with its videos still finds
them). An update from another folder gets ids relative to that first root (`../new_batch/vid_00000.mp4`):
files of two folders never share an id, so nothing is skipped silently, and an update from a subfolder or
a parent of the root finds the ids that the root's own files already have. The folders embedded besides the root
are recorded relative to it (`source_folders`: `../new_batch`), so `dgl serve` serves each id from its own folder.

Deleted videos: rows whose file (root / id) no longer exists are kept and counted (`EmbedResult.missing`);
`prune=True` (with `update`) drops them in the same generation switch, which renumbers the rows after them.
Pruning is refused while the root folder itself is missing (an unmounted disk is not a deletion).

Segments (`settings.segments`, `dgl embed --window W --stride S [--scenes]`): each video becomes one row per
window (`data.windows`), decoded once per file (`loader.iter_window_groups`); the ids sidecar repeats the video's
id for each of its rows and `emb.segments.npy` holds each row's (start, end) seconds (`store`). Everything above
works per video: a video's rows are all written or none (a decode failure or a NaN/inf window fails the whole
video), chunks hold whole videos, `--update` adds a new video's windows, `--prune` drops all rows of a deleted
one. The segmentation is recorded in the manifest; a job with another one (or none) on an existing set is
refused: one file never mixes whole-video rows and windows, or two kinds of windows.

Precision and frame sampling: whole videos are decoded with the model's frame sampling (`Encoder.frame_sampling`;
windows sample each window uniformly). The manifest records the sampling (`frame_sampling`), the encoder's
`precision` and `encoder_backend`, and the precisions of all its rows (`row_precisions`). A job that adds rows
(`--update`, or resuming an unfinished job's chunks) with another frame sampling is refused; with another precision
it is allowed only where `precision.check_mixing` allows it (each reduced precision involved held the export's
parity), else refused naming both precisions. The manifest also records the hosts that computed its rows (`hosts`:
ISA, onnxruntime version, the precision's parity on that host); adding rows computed where the numbers differ beyond
tolerance is refused (`precision.check_hosts`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import shutil
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dgl_deploy.data.discover import VideoSource, find_videos, rebase, source_root, unstorable
from dgl_deploy.data.sampling import DEFAULT_SAMPLING
from dgl_deploy.data.windows import DEFAULT_SCENE_THRESHOLD, Segmentation, describe_record
from dgl_deploy.errors import DGLError
from dgl_deploy.files import atomic_path, atomic_write_text
from dgl_deploy.limits import read_json
from dgl_deploy.retrieval.precision import (
    check_hosts,
    check_mixing,
    encoder_precision,
    host_record,
    merge_hosts,
    parity_manifest,
    recorded_hosts,
)
from dgl_deploy.retrieval.store import (
    EmbeddingStore,
    StorePaths,
    append_set,
    ids_digest,
    open_store,
    path_fields,
    repair_set,
    write_set,
    writer_lock,
)
from dgl_deploy.runtime.backends.base import Encoder
from dgl_deploy.runtime.manifest import check_same_model


@dataclass(frozen=True)
class EmbedSettings:
    """How to run an embedding job (all but `workers` and `timeout` fix the output and must match on resume)."""

    batch_size: int = 16  # videos per encoder call
    workers: int = 2  # decoding workers (each a crash-isolated process)
    chunk_size: int = 256  # videos per resumable chunk file
    fp16: bool = False  # store float16 rows (half the size)
    timeout: float = 60.0  # seconds allowed to decode one file (with segments: one group of its windows)
    segments: Segmentation | None = None  # one row per window of each video; None: one row per video

    def __post_init__(self) -> None:
        """Refuse values no job can run with (library callers get the CLI's checks too)."""
        for name in ("batch_size", "workers", "chunk_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DGLError(f"EmbedSettings: {name} must be a whole number >= 1, got {value!r}")
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float)) or \
                not 0 < self.timeout < math.inf:
            raise DGLError(f"EmbedSettings: timeout must be a number of seconds > 0, got {self.timeout!r}")
        if not isinstance(self.fp16, bool):
            raise DGLError(f"EmbedSettings: fp16 must be True or False, got {self.fp16!r}")
        if self.segments is not None and not isinstance(self.segments, Segmentation):
            raise DGLError(f"EmbedSettings: segments must be a Segmentation or None, got {self.segments!r}")

    def record(self) -> dict[str, Any]:
        """The settings as the manifest records them (segments as `Segmentation.record`)."""
        return {**asdict(self), "segments": self.segments.record() if self.segments else None}


SCENES_WINDOW = 10.0  # seconds: the window when scenes are asked for without one


def segmentation(window: float | None = None, stride: float | None = None, scenes: bool = False,
                 scene_threshold: float = DEFAULT_SCENE_THRESHOLD) -> Segmentation | None:
    """The rows asked for by `dgl embed --window/--stride/--scenes` (and `dgl_deploy.embed_videos`): one per window
    of `window` seconds every `stride` (default: the window), cut at shots with `scenes` (window default
    SCENES_WINDOW); None: one row per video."""
    if window is None and not scenes:
        if stride is not None:
            raise DGLError("--stride needs --window (the length of each window, in seconds)")
        return None
    window = SCENES_WINDOW if window is None else window
    return Segmentation(window, window if stride is None else stride, scenes, scene_threshold)


def check_resume(out: Path | str, resume: bool, overwrite: bool) -> None:
    """Refuse to start a job without `resume` where an unfinished one left its chunks (unless `overwrite`)."""
    parts = StorePaths.of(out).parts
    if not resume and parts.exists() and not overwrite:
        raise DGLError(f"{parts} holds an unfinished job: rerun with --resume or --overwrite")


@dataclass
class EmbedResult:
    """What a job did (also written into the manifest)."""

    out: Path
    total: int  # videos found
    embedded: int  # videos embedded by this job
    existing: int  # rows kept from an earlier set (--update)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (id, reason)
    seconds: float = 0.0
    decode_wait_seconds: float = 0.0  # encoder idle, waiting for decoded frames
    encode_seconds: float = 0.0
    backend: str = ""
    model: str | None = None  # model path recorded for `dgl query`
    missing: int = 0  # rows kept whose video file no longer exists
    pruned: int = 0  # rows dropped because their video file no longer exists (--prune)
    up_to_date: bool = False  # the set already held every video: nothing was written
    new_rows: int = 0  # rows written by this job (= embedded, unless segmented)
    precision: str = ""  # what the encoder computes at (`precision.encoder_precision`)
    encoder_backend: str = ""  # Encoder.backend: torch, onnxruntime, tensorrt
    host: dict[str, Any] = field(default_factory=dict)  # the host computing the rows (`precision.host_record`)

    @property
    def rows(self) -> int:
        """Rows in the set after the job."""
        return self.existing + self.new_rows


class Reporter(Protocol):
    """Progress sink: the CLI shows a bar, JSON lines, or nothing."""

    def start(self, total: int, done: int) -> None: ...
    def advance(self, ok: int, failed: int) -> None: ...


class SilentReporter:
    def start(self, total: int, done: int) -> None:
        pass

    def advance(self, ok: int, failed: int) -> None:
        pass


@dataclass
class EmbedJob:
    """A planned job: what to embed, which existing rows to keep, and the descriptor a resumed job must match."""

    paths: StorePaths
    todo: list[VideoSource]  # videos still to embed, in output order
    existing: EmbeddingStore | None  # the set being updated
    keep: list[range]  # runs of existing rows kept (all of them unless pruning)
    root: Path  # the folder ids are relative to
    embed_dim: int
    descriptor: dict  # model, sizes and settings that fix the output (checked on resume)
    result: EmbedResult
    folders: list[str] = field(default_factory=list)  # other folders embedded into the set, relative to root (posix)

    @property
    def writes(self) -> bool:
        """Whether the job writes a new generation (else the set is up to date)."""
        return bool(self.todo) or self.existing is None or bool(self.result.pruned)


Runner = Callable[[EmbedJob, Reporter], None]  # embeds job.todo into chunk files (single machine or Ray)


def run_job(source: Path | str, out: Path | str, encoder: Encoder, settings: EmbedSettings, runner: Runner, *,
            update: bool, overwrite: bool, prune: bool, model: str | None, backend: str,
            reporter: Reporter | None) -> EmbedResult:
    """Lock the output, plan, run `runner` on the pending chunks, and write the set (see the module docstring)."""
    paths = StorePaths.of(out)
    with writer_lock(paths):
        repair_set(paths)
        job = _plan(paths, source, encoder, settings, update=update, overwrite=overwrite, prune=prune,
                    model=model, backend=backend)
        if not job.writes:
            job.result.up_to_date = True
            return job.result
        started = time.perf_counter()
        try:
            runner(job, reporter or SilentReporter())
        except BaseException:
            if not any(paths.parts.glob("chunk_*.npz")):
                shutil.rmtree(paths.parts, ignore_errors=True)  # nothing finished: leave nothing behind
            raise
        job.result.seconds = time.perf_counter() - started
        _merge(job, settings)
        return job.result


def embed_videos(
    source: Path | str,
    out: Path | str,
    encoder: Encoder,
    settings: EmbedSettings = EmbedSettings(),
    *,
    update: bool = False,
    overwrite: bool = False,
    prune: bool = False,
    reporter: Reporter | None = None,
    model: str | None = None,
) -> EmbedResult:
    """Embed every video named by `source` into the set at `out` (.npy); see the module docstring.
    `model` (the path the encoder was opened from) is recorded so `dgl query` can find it."""
    return run_job(source, out, encoder, settings, lambda job, rep: _run_chunks(job, encoder, settings, rep),
                   update=update, overwrite=overwrite, prune=prune, model=model, backend=encoder.describe(),
                   reporter=reporter)


def encode_files(encoder: Encoder, paths: list[Path], *, batch_size: int = 16, workers: int = 2,
                 timeout: float = 60.0) -> np.ndarray:
    """(N, E) float32 rows of whole video files, decoded as `dgl embed` decodes them (the model's frame sampling,
    crash-isolated decoders under a time limit per file); DGLError naming the first file that cannot be decoded.
    (`embed_videos` does not call this: it writes chunks as it goes; both decode through `iter_video_batches`.)"""
    from dgl_deploy.data.loader import iter_video_batches

    EmbedSettings(batch_size=batch_size, workers=workers, timeout=timeout)  # the job's checks of these values
    rows = [np.zeros((0, encoder.embed_dim), np.float32)]
    batches = iter_video_batches(list(paths), encoder.frames, encoder.image_size, batch_size, workers,
                                 timeout=timeout, sampling=encoder.frame_sampling)
    try:
        for batch in batches:
            if batch.failures:
                failure = batch.failures[0]
                raise DGLError(f"{failure.path}: {failure.reason}")
            if len(batch.frames):
                rows.append(np.asarray(encoder.encode_videos(batch.frames), dtype=np.float32))
    finally:
        batches.close()  # stops the decoders at once
    return np.concatenate(rows)


def _plan(paths: StorePaths, source: Path | str, encoder: Encoder, settings: EmbedSettings, *, update: bool,
          overwrite: bool, prune: bool, model: str | None, backend: str) -> EmbedJob:
    """Check the request against the existing set, find what to embed, prepare `<out>.parts/` if anything is to
    be written. Every refusal comes before anything is created."""
    if prune and not update:
        raise DGLError("--prune drops rows of an existing set: use it with --update")
    if settings.segments and settings.segments.scenes:
        from dgl_deploy.data.scenes import require_scenedetect

        require_scenedetect()
    existing = _existing(paths, encoder, settings, update, overwrite)
    root = (existing.recorded_path("source_root") if existing else None) or source_root(source)
    videos, unnamed = unstorable(rebase(find_videos(source), source_root(source), root))
    known = set(existing.ids) if existing else set()
    todo = [v for v in videos if v.id not in known]
    if existing and todo and not update:
        raise DGLError(f"{paths.emb} already exists and lacks {len(todo)} of the {len(videos)} videos: use --update "
                       "to add them, or --overwrite to redo the set")
    missing = _missing_rows(existing, root)
    pruned = _prunable(paths, root, missing) if prune else []
    count = len(existing.ids) if existing else 0
    descriptor = _descriptor(encoder, settings, todo, count, source)
    if todo:
        _check_mixing(paths, existing, encoder, descriptor)
    result = EmbedResult(paths.emb, len(videos) + len(unnamed), 0, count - len(pruned), unnamed, backend=backend,
                         model=os.path.abspath(model) if model else None, missing=len(missing) - len(pruned),
                         pruned=len(pruned), precision=encoder_precision(encoder), encoder_backend=encoder.backend,
                         host=host_record(encoder))
    job = EmbedJob(paths, todo, existing, _runs(count, pruned), root, encoder.embed_dim, descriptor, result,
                   _source_folders(existing, source, root))
    _clear_finished_parts(paths, existing)
    if job.writes:
        _prepare_parts(paths.parts, descriptor, replace=overwrite)
    return job


def _source_folders(existing: EmbeddingStore | None, source: Path | str, root: Path) -> list[str]:
    """The folders embedded into the set besides `root`, relative to it: the existing set's, and the folder of
    `source` when it lies outside the root (an update from another folder: `../new_batch`)."""
    folders = list(existing.manifest.get("source_folders") or []) if existing else []
    folder = Path(os.path.relpath(source_root(source), os.path.abspath(root))).as_posix()
    outside = folder == ".." or folder.startswith("../")
    return folders + [folder] if outside and folder not in folders else folders


def _existing(paths: StorePaths, encoder: Encoder, settings: EmbedSettings, update: bool,
              overwrite: bool) -> EmbeddingStore | None:
    """The set at `paths` (checked to be this model's and segmented as asked), or None when there is none or it
    is to be replaced."""
    if overwrite or not (paths.manifest.exists() or paths.emb.exists()):
        return None
    store = open_store(paths.emb)
    fix = "--update needs the model that made them" if update else "embed into another --out"
    check_same_model(store.fingerprint, encoder.fingerprint, str(paths.emb), fix=f"{fix}, or --overwrite to redo it")
    wanted = settings.segments.record() if settings.segments else None
    if store.segments != wanted:
        raise DGLError(f"{paths.emb} holds {describe_record(store.segments)}, this job makes "
                       f"{describe_record(wanted)}: one set never mixes the two; embed into another --out, or "
                       "--overwrite to redo the set")
    return store


def _check_mixing(paths: StorePaths, existing: EmbeddingStore | None, encoder: Encoder, descriptor: dict) -> None:
    """Refuse to add rows of another frame sampling to a set, or of a precision that does not mix with its rows'
    (or with an unfinished job's chunks being resumed): `precision.check_mixing`."""
    if existing and existing.frame_sampling != descriptor["frame_sampling"]:
        raise DGLError(f"{paths.emb} holds rows of {existing.frame_sampling} frame sampling, this job samples "
                       f"{descriptor['frame_sampling']} frames: one set never mixes the two; embed into another --out, "
                       "or --overwrite to redo the set")
    resumed = _parts_precisions(paths.parts) if _read_job(paths.parts / "job.json") == descriptor else set()
    have = (existing.precisions if existing else set()) | resumed
    what = f"{paths.emb}" if existing else f"{paths.parts} (an unfinished job)"
    export = parity_manifest(encoder, existing.recorded_path("model") if existing else None)
    check_mixing(what, have, encoder_precision(encoder), export,
                 fix=f"embed at {' or '.join(sorted(have))} (--precision), or --overwrite to redo the set")
    if existing:
        check_hosts(str(paths.emb), recorded_hosts(existing.manifest), host_record(encoder),
                    fix="re-embed the set here with --overwrite, or update it from a host whose parity holds")


def _parts_precisions(parts: Path) -> set[str]:
    """The precisions the finished chunks of an unfinished job were computed at."""
    found = set()
    for path in parts.glob("chunk_*.npz"):
        try:
            with np.load(path, allow_pickle=False) as data:
                found.add(str(data["precision"]))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            continue  # unreadable: redone; from an older version: merged as this job's
    return found


def _missing_rows(existing: EmbeddingStore | None, root: Path) -> list[int]:
    """Rows of the set whose video file (root / id) no longer exists."""
    return [row for row, video_id in enumerate(existing.ids) if not (root / video_id).exists()] if existing else []


def _prunable(paths: StorePaths, root: Path, missing: list[int]) -> list[int]:
    """The rows --prune drops: those whose file is gone, unless the whole root folder is."""
    if missing and not root.is_dir():
        raise DGLError(f"{root} (the folder {paths.emb} was made from) is not there: cannot tell deleted videos "
                       "from an unmounted or moved folder, so --prune is refused")
    return missing


def _runs(count: int, dropped: list[int]) -> list[range]:
    """Runs of consecutive row numbers in range(count) without `dropped` (sorted)."""
    edges = [-1, *dropped, count]
    return [range(a + 1, b) for a, b in zip(edges, edges[1:], strict=False) if b > a + 1]


def _descriptor(encoder: Encoder, settings: EmbedSettings, todo: list[VideoSource], base: int,
                source: Path | str) -> dict:
    """Everything that determines the output of the pending work; a resumed job must match it exactly."""
    return {"model_fingerprint": encoder.fingerprint, "frames": encoder.frames, "image_size": encoder.image_size,
            "frame_sampling": DEFAULT_SAMPLING if settings.segments else encoder.frame_sampling,
            "batch_size": settings.batch_size, "chunk_size": settings.chunk_size, "fp16": settings.fp16,
            "base_rows": base, "todo": len(todo), "todo_ids": ids_digest([v.id for v in todo]), "source": str(source),
            **({"segments": settings.segments.record()} if settings.segments else {})}


def _digest(descriptor: dict) -> str:
    return hashlib.sha256(json.dumps(descriptor, sort_keys=True).encode()).hexdigest()[:16]


def _read_job(job_file: Path) -> dict | None:
    try:
        return read_json(job_file, "job")
    except (FileNotFoundError, DGLError):
        return None


def _clear_finished_parts(paths: StorePaths, existing: EmbeddingStore | None) -> None:
    """Remove the parts of a job that is already in the set (killed between its switch and its clean-up)."""
    job = _read_job(paths.parts / "job.json")
    if existing and job is not None and existing.manifest.get("job") == _digest(job):
        shutil.rmtree(paths.parts)


def _prepare_parts(parts: Path, job: dict, *, replace: bool) -> None:
    """Resume the unfinished job in `parts` if it is this one; else start fresh, unless that would throw
    away finished chunks of another job (refused, unless `replace`)."""
    found = _read_job(parts / "job.json")
    if found == job:
        return
    if found is not None and not replace and any(parts.glob("chunk_*.npz")):
        raise DGLError(f"{parts} holds an unfinished job with other videos, model or settings: rerun it with "
                       "the same ones to finish it, or pass --overwrite (or delete that folder) to start over")
    shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir(parents=True)
    atomic_write_text(parts / "job.json", json.dumps(job, indent=1))


def chunk_file(parts: Path, index: int) -> Path:
    return parts / f"chunk_{index:06d}.npz"


def start_chunks(job: EmbedJob, settings: EmbedSettings, reporter: Reporter) -> tuple[list[range], list[int]]:
    """The job's chunks (ranges of `job.todo`) and those still to embed: not written yet, or written with other
    videos than this job's (removed: a stale chunk is redone, never merged). Starts the reporter."""
    size, parts = settings.chunk_size, job.paths.parts
    chunks = [range(start, min(start + size, len(job.todo))) for start in range(0, len(job.todo), size)]
    pending = []
    for k, span in enumerate(chunks):
        expected = [job.todo[i].id for i in span]
        if not _chunk_matches(chunk_file(parts, k), expected, job.embed_dim, settings.segments is not None):
            chunk_file(parts, k).unlink(missing_ok=True)
            pending.append(k)
    reporter.start(len(job.todo), len(job.todo) - sum(len(chunks[k]) for k in pending))
    return chunks, pending


def _chunk_matches(path: Path, expected_ids: list[str], dim: int, segmented: bool) -> bool:
    """Whether the chunk file holds exactly these videos (each written or failed), with rows (and segments) of
    the right shapes: one row per video, or any number of rows per video when `segmented`."""
    try:
        with np.load(path, allow_pickle=False) as data:
            ids, failed, rows = list(map(str, data["ids"])), list(map(str, data["failed_ids"])), data["rows"]
            spans = data["spans"].shape if "spans" in data.files else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return False
    videos = list(dict.fromkeys(ids))
    return sorted(videos + failed) == sorted(expected_ids) and rows.shape == (len(ids), dim) and \
        (spans == (len(ids), 2) if segmented else spans is None and len(videos) == len(ids))


@dataclass
class _Rows:
    """Per-row items (frame stacks waiting for the encoder, or encoded rows) with the position in `todo` of each
    row's video and the row's (start, end) seconds (None for a whole video)."""

    items: list[np.ndarray] = field(default_factory=list)  # (T, S, S, 3) uint8 or (E,) float32 each
    owners: list[int] = field(default_factory=list)
    spans: list[Any] = field(default_factory=list)

    def extend(self, items: Any, owners: list[int], spans: list[Any]) -> None:
        self.items += list(items)
        self.owners += owners
        self.spans += spans

    def drop(self, position: int) -> None:
        """Forget the rows of the video at `position` (it failed)."""
        keep = [i for i, owner in enumerate(self.owners) if owner != position]
        self.items = [self.items[i] for i in keep]
        self.owners = [self.owners[i] for i in keep]
        self.spans = [self.spans[i] for i in keep]


def _run_chunks(job: EmbedJob, encoder: Encoder, settings: EmbedSettings, reporter: Reporter) -> None:
    chunks, pending = start_chunks(job, settings, reporter)
    positions = [i for k in pending for i in chunks[k]]
    for k, rows, failures, untimed in _encoded_chunks(job.todo, positions, chunks, encoder, settings, job.result):
        spans = np.array(rows.spans, np.float64).reshape(-1, 2) if settings.segments else None
        reporter.advance(*write_chunk(chunk_file(job.paths.parts, k), _stack(rows.items, encoder.embed_dim),
                                      [job.todo[p].id for p in rows.owners], failures, settings.fp16, spans,
                                      precision=job.result.precision, untimed=sorted(untimed)))


def _encoded_chunks(todo: list[VideoSource], positions: list[int], chunks: list[range], encoder: Encoder,
                    settings: EmbedSettings, result: EmbedResult
                    ) -> Iterator[tuple[int, _Rows, list[tuple[str, str]], set[str]]]:
    """Decode `positions` of `todo` in the background; yield (chunk, its rows, its failures, the ids of its videos
    whose times are frame index / fps for want of timestamps) per finished chunk.
    An encoder call takes `batch_size` rows (windows, or whole videos) of one chunk: never straddles chunks."""
    from dgl_deploy.data.loader import VideoFailure

    chunk_of = {i: i // settings.chunk_size for i in positions}
    remaining = {k: len(chunks[k]) for k in set(chunk_of.values())}
    waiting = _Rows()  # frame stacks for the next encoder call
    done: dict[int, tuple[_Rows, list[tuple[str, str]], set[str]]] = {}
    waited = time.perf_counter()
    for piece in _decoded([todo[i].path for i in positions], encoder, settings):
        result.decode_wait_seconds += time.perf_counter() - waited
        position = positions[piece.index]
        k = chunk_of[position]
        rows, failures, untimed = done.setdefault(k, (_Rows(), [], set()))
        if isinstance(piece, VideoFailure):
            failures.append((todo[position].id, piece.reason))
            waiting.drop(position)
            rows.drop(position)
        else:
            stacks = piece.stacks
            if not stacks.timed:
                untimed.add(todo[position].id)
            spans = [None] * len(stacks.frames) if stacks.spans is None else [tuple(map(float, s)) for s in stacks.spans]
            for frames, span in zip(stacks.frames, spans, strict=True):
                waiting.extend([frames], [position], [span])
                if len(waiting.items) == settings.batch_size:
                    _encode(encoder, waiting, rows, result)
                    waiting = _Rows()
        if isinstance(piece, VideoFailure) or piece.stacks.last:
            remaining[k] -= 1
        if remaining[k] == 0:
            if waiting.items:
                _encode(encoder, waiting, rows, result)
                waiting = _Rows()
            yield k, *done.pop(k)
        waited = time.perf_counter()


def _decoded(paths: list[Path], encoder: Encoder, settings: EmbedSettings) -> Iterator[Any]:
    """`loader.WindowGroup`s and `VideoFailure`s in file order: every window of each file (segmented), or each
    file's T frames as one group (its `spans` None)."""
    from dgl_deploy.data.loader import WindowGroup, iter_video_batches, iter_window_groups
    from dgl_deploy.data.window_decode import WindowStacks

    if settings.segments:
        yield from iter_window_groups(paths, settings.segments, encoder.frames, encoder.image_size, settings.workers,
                                      timeout=settings.timeout)
        return
    for batch in iter_video_batches(paths, encoder.frames, encoder.image_size, settings.batch_size, settings.workers,
                                    timeout=settings.timeout, sampling=encoder.frame_sampling):
        pieces = {f.index: f for f in batch.failures}
        pieces.update((i, WindowGroup(i, WindowStacks(None, stack[None], 0, 1)))
                      for i, stack in zip(batch.indices, batch.frames, strict=True))
        yield from (pieces[i] for i in sorted(pieces))


def _encode(encoder: Encoder, waiting: _Rows, rows: _Rows, result: EmbedResult) -> None:
    """One encoder call on the waiting frame stacks (all of one chunk); appends the rows to `rows`."""
    started = time.perf_counter()
    vectors = encoder.encode_videos(np.stack(waiting.items))  # (B, E)
    result.encode_seconds += time.perf_counter() - started
    rows.extend(vectors, waiting.owners, waiting.spans)


def _stack(rows: list[np.ndarray], dim: int) -> np.ndarray:
    return np.stack(rows) if rows else np.zeros((0, dim), np.float32)


def write_chunk(path: Path, rows: np.ndarray, ids: list[str], failures: list[tuple[str, str]], fp16: bool,
                spans: np.ndarray | None = None, *, precision: str, untimed: list[str] = ()) -> tuple[int, int]:
    """Write one finished chunk atomically: rows (R, E) of the videos `ids` (one per row) computed at `precision`
    and, when segmented, their (R, 2) `spans`. A video with a row that is not finite once stored (NaN/inf from the encoder, or beyond
    the float16 range) becomes a failure, all its rows dropped. `untimed`: the ids whose spans are frame index / fps
    (the file has no timestamps). Returns (videos written, videos failed)."""
    with np.errstate(over="ignore"):
        stored = np.asarray(rows).astype(np.float16 if fp16 else np.float32)
    bad: dict[str, str] = {}
    for video_id, row, ok in zip(ids, rows, np.isfinite(stored).all(axis=1), strict=True):
        if not ok:
            bad.setdefault(video_id, _not_finite_reason(row))
    failures = failures + list(bad.items())
    keep = np.array([i not in bad for i in ids], bool)
    ids = [i for i, ok in zip(ids, keep, strict=True) if ok]
    arrays = {"rows": stored[keep], "ids": np.array(ids, dtype=str),
              "failed_ids": np.array([f[0] for f in failures], dtype=str),
              "failed_reasons": np.array([f[1] for f in failures], dtype=str), "precision": np.array(precision),
              "untimed_ids": np.array(sorted(set(untimed) - set(bad)), dtype=str)}
    if spans is not None:
        arrays["spans"] = np.asarray(spans, np.float64).reshape(-1, 2)[keep]
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    return len(dict.fromkeys(ids)), len(failures)


def _not_finite_reason(row: np.ndarray) -> str:
    if np.isfinite(row).all():
        return "embedding exceeds the float16 range (embed without --fp16)"
    return "the encoder returned NaN/inf for this video"


def _read_chunks(parts: Path, count: int) -> Iterator[dict[str, np.ndarray]]:
    for k in range(count):
        with np.load(chunk_file(parts, k), allow_pickle=False) as data:
            yield {key: data[key] for key in data.files}


def _merge(job: EmbedJob, settings: EmbedSettings) -> None:
    """Write the kept rows then the chunks as the set's new generation (one switch), or append the chunks to it
    where every row is kept (`store.append_set`), then remove the parts."""
    paths, result = job.paths, job.result
    count = -(-len(job.todo) // settings.chunk_size)
    new_ids: list[str] = []
    new_spans: list[np.ndarray] = []
    untimed = set(job.existing.manifest.get("times_from_frame_index") or []) if job.existing else set()
    precisions = _kept_precisions(job)
    for chunk in _read_chunks(paths.parts, count):
        new_ids += map(str, chunk["ids"])
        if precisions is not None and len(chunk["ids"]):
            precisions.add(str(chunk["precision"]) if "precision" in chunk else result.precision)
        new_spans += [chunk["spans"]] if "spans" in chunk else []
        untimed.update(map(str, chunk.get("untimed_ids", ())))
        result.failures += [(str(i), str(r)) for i, r in zip(chunk["failed_ids"], chunk["failed_reasons"], strict=True)]
    result.new_rows, result.embedded = len(new_ids), len(set(new_ids))
    kept = job.existing.ids if job.existing else []
    ids = [kept[row] for run in job.keep for row in run] + new_ids
    blocks = [job.existing.vectors[run.start:run.stop] for run in job.keep] if job.existing else []
    spans = None
    if settings.segments:
        kept_spans = [job.existing.spans[run.start:run.stop] for run in job.keep] if job.existing else []
        spans = np.concatenate([np.zeros((0, 2)), *kept_spans, *new_spans])
    new_rows = (chunk["rows"] for chunk in _read_chunks(paths.parts, count))
    atomic_write_text(paths.errors, "".join(f"{i}\t{r}\n" for i, r in result.failures))
    dtype = np.float16 if settings.fp16 else np.float32
    fields = {**_manifest_fields(job, settings, precisions), "times_from_frame_index": sorted(untimed & set(ids))}
    if job.existing is not None and job.keep == [range(len(job.existing.ids))]:  # every row kept: appended
        append_set(job.existing, new_rows, new_ids, dtype=dtype, fields=fields,
                   spans=None if spans is None else spans[len(job.existing.ids):])
    else:
        write_set(paths, itertools.chain(blocks, new_rows), ids, dim=job.embed_dim, dtype=dtype, fields=fields,
                  spans=spans)
    shutil.rmtree(paths.parts, ignore_errors=True)


def _kept_precisions(job: EmbedJob) -> set[str] | None:
    """The precisions of the existing rows the job keeps (None: some are of an unknown precision)."""
    if job.existing is None or not job.keep:
        return set()
    return set(job.existing.precisions) or None


def _manifest_fields(job: EmbedJob, settings: EmbedSettings, precisions: set[str] | None) -> dict[str, Any]:
    result, folder = job.result, job.paths.emb.parent
    return {
        "model_fingerprint": job.descriptor["model_fingerprint"],
        **(path_fields("model", result.model, folder) if result.model else {"model": None}),
        "backend": result.backend,
        "encoder_backend": result.encoder_backend,
        "precision": result.precision,
        "row_precisions": sorted(precisions) if precisions is not None else [],
        "hosts": merge_hosts(recorded_hosts(job.existing.manifest) if job.existing and job.keep else [],
                             result.host if result.new_rows else None),
        "frame_sampling": job.descriptor["frame_sampling"],
        "frames": job.descriptor["frames"],
        "image_size": job.descriptor["image_size"],
        "source": job.descriptor["source"],
        **path_fields("source_root", job.root, folder),
        "source_folders": job.folders,
        "settings": settings.record(),
        "failures": len(result.failures),
        "missing": result.missing,
        "job": _digest(job.descriptor),
        "timings": {"seconds": round(result.seconds, 3), "videos_per_second": round(
            result.embedded / result.seconds, 3) if result.seconds else None,
            "decode_wait_seconds": round(result.decode_wait_seconds, 3),
            "encode_seconds": round(result.encode_seconds, 3)},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


__all__ = ["EmbedSettings", "EmbedResult", "EmbedJob", "Reporter", "SilentReporter", "Runner", "run_job",
           "start_chunks", "chunk_file", "write_chunk", "embed_videos"]
